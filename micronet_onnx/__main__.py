from micronet_onnx.cli.app import main

main()
