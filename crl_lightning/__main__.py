"""``python -m crl_lightning`` is the ``crl`` command."""

from crl_lightning.cli import main

if __name__ == "__main__":
    main()
