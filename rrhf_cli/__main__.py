from rrhf_cli import main

raise SystemExit(main())
