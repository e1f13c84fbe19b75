from fastws.cli import main

raise SystemExit(main())
