"""Training: the EC2T transformation (`ec2t`), the phased training loop (`loop`), the checkpoint
layout (`checkpoint`) and the training-step benchmark (`bench_step`)."""
