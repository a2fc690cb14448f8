from attnlab.cli.main import main

raise SystemExit(main())
