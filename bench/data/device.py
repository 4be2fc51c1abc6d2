"""A dataset kept on the device as uint8 tensors, Poisson-sampled and augmented there.

Why not ``torch.utils.data.DataLoader`` with per-image transforms: on CIFAR-sized images the
per-image Python transforms are CPU bound and starve a GPU, above all with augmentation
multiplicity (K views per example). And Opacus' ``DPDataLoader`` draws with q = 1/len(loader),
while the accountant must be handed the q = B/N the suite asks for. So the whole training set is
one uint8 tensor on the device, batches are drawn there with q = B/N (`DeviceData.poisson_batch`),
and crops and flips are batched tensor ops (`DeviceData.augment`).
"""

from __future__ import annotations

import torch

from bench.data.dataset import Dataset
from bench.errors import DataError
from bench.seeds import stream


class DeviceData:
    """A dataset's uint8 tensors on the device, with Poisson sampling and augmentation there.

    Every random operation takes an explicit ``torch.Generator`` on the same device, so one
    seed fixes the data order and the augmentations, identically for every norm.

    Attributes:
        device: Where the tensors live.
        train_x: Private training images, uint8 ``(N, C, H, W)`` (without the validation split
            in a tuning run).
        train_y: Their labels, int64 ``(N,)``.
        test_x: The evaluation images, uint8: the test set, or the validation split in a
            tuning run (``eval_split`` says which).
        test_y: Their labels.
        eval_split: ``test`` or ``val``.
        public_x: Public images (held out of the private set), or None.
        public_y: Public labels, or None.
        num_classes: Number of classes.
        channels: C, image channels.
        flip: Whether augmentation may flip horizontally (the dataset declares it).
    """

    def __init__(
        self,
        dataset: Dataset,
        device: torch.device | str,
        *,
        normalize: bool = True,
        holdout: bool = False,
    ):
        """Copy ``dataset`` to ``device``; ``normalize`` standardises with its mean and std.

        With ``holdout`` (a tuning run) the validation split is taken out of the training
        examples and becomes the evaluation set (``eval_x``, ``eval_split == "val"``); the test
        set is not copied at all, so nothing in the run can read it.
        """
        self.device = torch.device(device)
        train_x, train_y = dataset.train_x, dataset.train_y
        eval_x, eval_y, self.eval_split = dataset.test_x, dataset.test_y, "test"
        if holdout:
            if dataset.val_index is None:
                raise DataError("a tuning run needs a validation split (data.val_split > 0)")
            keep = torch.ones(len(train_y), dtype=torch.bool)
            keep[dataset.val_index] = False
            eval_x, eval_y = train_x[dataset.val_index], train_y[dataset.val_index]
            train_x, train_y, self.eval_split = train_x[keep], train_y[keep], "val"
        self.train_x = train_x.to(self.device)
        self.train_y = train_y.to(self.device)
        self.test_x = eval_x.to(self.device)
        self.test_y = eval_y.to(self.device)
        self.public_x = None if dataset.public_x is None else dataset.public_x.to(self.device)
        self.public_y = None if dataset.public_y is None else dataset.public_y.to(self.device)
        self.num_classes = dataset.num_classes
        self.channels, self.flip = dataset.channels, dataset.flip
        # (x / 255 - mean) / std folded into one multiply-add per pixel.
        c = self.channels
        mean = torch.tensor(dataset.mean if normalize else (0.0,) * c, device=self.device)
        std = torch.tensor(dataset.std if normalize else (1.0,) * c, device=self.device)
        self._scale = (1.0 / (255.0 * std)).view(c, 1, 1)
        self._shift = (-mean / std).view(c, 1, 1)

    @property
    def num_private(self) -> int:
        """N: the number of private training examples."""
        return self.train_x.shape[0]

    def generator(self, seed: int, purpose: str) -> torch.Generator:
        """The run stream of ``purpose`` under run seed ``seed``, on this data's device."""
        return stream(seed, purpose, self.device)

    def sample_rate(self, batch_size: int) -> float:
        """q = B / N: the Poisson sampling rate for an expected batch of ``batch_size``.

        The same q must be handed to the accountant.
        """
        if not 1 <= batch_size <= self.num_private:
            raise ValueError(f"batch_size must be in [1, {self.num_private}], got {batch_size}")
        return batch_size / self.num_private

    def poisson_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of one Poisson-sampled batch: each example included independently with q.

        The size is Binomial(N, q) and may be 0; an empty batch is a valid DP-SGD step (noise
        only), so callers must handle it rather than redraw, which would change the privacy
        analysis.

        Returns:
            A 1-D int64 tensor of indices into ``train_x`` on the device, in increasing order.
        """
        q = self.sample_rate(batch_size)
        mask = torch.rand(self.num_private, generator=generator, device=self.device) < q
        return torch.nonzero(mask, as_tuple=True)[0]

    def augment(
        self,
        x: torch.Tensor,
        *,
        views: int,
        padding: int,
        flip: bool,
        generator: torch.Generator,
        keep: slice = slice(None),
    ) -> torch.Tensor:
        """Reflect-pad, random-crop and random-flip ``views`` independent views of each image.

        One gather builds every view: per-view crop offsets and flips become row and column
        index maps into the reflect-padded image, so there is no loop over examples and the
        padded image is never materialised.

        Args:
            x: uint8 images ``(B, C, H, W)`` on the device (B may be 0).
            views: Views per image (augmentation multiplicity K).
            padding: Reflect padding in pixels before the crop back to ``(H, W)``; < H and W.
            flip: Flip each view horizontally with probability 1/2.
            generator: Generator on the device; fixes offsets and flips.
            keep: The examples whose views are built (a process's share of the batch); the
                offsets and flips are drawn for all B, so the generator advances, and each
                example gets its views, exactly as when every view is built.

        Returns:
            float32 ``(len(keep), views, C, H, W)``, scaled to [0, 1] and standardised if
            configured.
        """
        b, c, h, w = x.shape
        if padding >= min(h, w):
            raise ValueError(f"padding {padding} must be smaller than the image ({h}x{w})")
        dev = x.device
        rows = torch.arange(h, device=dev).expand(b, views, h)
        cols = torch.arange(w, device=dev).expand(b, views, w)
        if padding:
            shift = torch.randint(
                -padding, padding + 1, (2, b, views, 1), generator=generator, device=dev
            )
            rows = _reflect(rows + shift[0], h)
            cols = _reflect(cols + shift[1], w)
        if flip:
            flipped = torch.rand(b, views, 1, generator=generator, device=dev) < 0.5
            cols = torch.where(flipped, cols.flip(-1), cols)
        x, rows, cols = x[keep], rows[keep], cols[keep]
        b = x.shape[0]
        batch = torch.arange(b, device=dev).view(b, 1, 1, 1, 1)
        channel = torch.arange(c, device=dev).view(1, 1, c, 1, 1)
        views_u8 = x[batch, channel, rows[:, :, None, :, None], cols[:, :, None, None, :]]
        return self._to_float(views_u8)

    def prepare_eval(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` to float32, scaled and standardised like training inputs."""
        return self._to_float(x)

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self._scale + self._shift


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-p, size - 1 + p] to their source pixel under reflect padding."""
    last = size - 1
    return last - (last - index.abs()).abs()
