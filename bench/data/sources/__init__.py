"""The built-in data sources, one module each; importing this package registers them all."""

from bench.data.sources import builtin, cifar100, imagenet, mnist, svhn

__all__ = ["builtin", "cifar100", "imagenet", "mnist", "svhn"]
