"""Entry point: `python main.py fit --config configs/embedded/badnet.yaml` (see README.md)."""

from lightning_app.cli import main

if __name__ == "__main__":
    main()
