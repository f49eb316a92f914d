"""``python -m crl_lightning`` is the ``crl`` command."""

from crl_lightning.cli import console_main

if __name__ == "__main__":
    console_main()
