from keras_bn_ext.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
