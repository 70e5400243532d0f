"""The package version, kept in a torch-free module so `gradtool --version` stays instant."""

__version__ = "0.1.0"
