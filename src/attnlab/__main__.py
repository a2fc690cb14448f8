from attnlab.cli.main import main

if __name__ == "__main__":  # not when a --jobs worker process (spawn) imports this module again
    raise SystemExit(main())
