"""`python -m aspo ...` is the same as the `aspo` command (used by `accelerate launch -m aspo`)."""

from aspo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
