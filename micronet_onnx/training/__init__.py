"""Training: the EC2T transformation and its layer policy (`ec2t`), the run settings (`config`), the
phased training loop (`loop`), the checkpoint type that owns the file layout (`checkpoint`) and the
training-step benchmark (`bench_step`)."""
