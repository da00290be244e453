"""Which axis of an image file is which: planes (Z), channels (C), rows and columns (pure).

A file gives an array and, from its metadata, one letter per axis (tifffile's ``series.axes``:
``Y``, ``X``, ``C`` or ``S`` for channels / colour samples, ``Z`` for planes, ``T`` time, ``Q``
or ``I`` unknown; Pillow images are ``YX`` or ``YXS``). :func:`arrange_axes` turns it into one
``(Z, C, H, W)`` layout:

* ``channel_axis`` / ``z_axis`` (indices into the array as stored, negative from the end;
  cellpose's ``--channel_axis`` / ``--z_axis``) say which axis is which; without them the
  letters do (``C`` or ``S`` = channels, ``Z`` = planes). A colour axis of 2 or 4 samples
  (gray + alpha, RGBA) loses its alpha;
* axes of length 1 are dropped; one axis left over besides rows and columns whose letter says
  nothing (``Q``, ``I``, ``T``) is taken as channels (a multichannel TIF written without
  metadata); more than one is an error that names the file and its axes.

:func:`select_channels` then picks or merges channels as cellpose's ``--chan`` does, numbered
from 1 as cellpose and Fiji count them (``0`` = all channels averaged into one gray channel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flowseg.errors import InputError

__all__ = ["arrange_axes", "check_channel", "select_channels"]


def _axis(index: int | None, ndim: int, what: str, name: str) -> int | None:
    if index is None:
        return None
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"{what}: expected an int axis index, got {index!r}")
    if not -ndim <= index < ndim:
        raise InputError(f"{name}: {what} {index} is out of range for an image with {ndim} axes")
    return int(index) % ndim


def _letter_axis(axes: str, letters: str, what: str, name: str) -> int | None:
    found = [i for i, a in enumerate(axes) if a in letters]
    if len(found) > 1:
        raise InputError(f"{name}: several {what} axes in {axes!r}; say which with --{what}-axis")
    return found[0] if found else None


def arrange_axes(data: np.ndarray, axes: str, *, channel_axis: int | None = None,
                 z_axis: int | None = None, name: str = "image") -> tuple[np.ndarray, bool]:
    """Arrange an image file's array as ``(Z, C, H, W)``.

    Parameters
    ----------
    data : ndarray
        As read from the file.
    axes : str
        One letter per axis of ``data`` (see the module docstring); any other length is
        treated as unknown letters.
    channel_axis, z_axis : int, optional
        Override the letters.
    name : str
        How messages name the image (its file).

    Returns
    -------
    image : (Z, C, H, W) ndarray
        Same dtype; Z = 1 and C = 1 when the file has no such axis.
    is_stack : bool
        The file has a plane axis of length > 1.

    Raises
    ------
    InputError
        Axes that cannot be told apart, the same axis given twice, indices out of range.
    """
    axes = axes.upper() if len(axes) == data.ndim else "Q" * data.ndim
    c = _axis(channel_axis, data.ndim, "channel-axis", name)
    z = _axis(z_axis, data.ndim, "z-axis", name)
    if c is None:
        c = _letter_axis(axes, "CS", "channel", name)
        c = None if c == z else c
    if z is None:
        z = _letter_axis(axes, "Z", "z", name)
        z = None if z == c else z
    if c is not None and c == z:
        raise InputError(f"{name}: the channel axis and the z axis are both axis {c}")
    rest = [i for i in range(data.ndim) if i not in (c, z) and data.shape[i] > 1]
    if len(rest) == 3 and c is None:
        c, rest = rest[0], rest[1:]
    if len(rest) != 2:
        raise InputError(f"{name}: cannot tell which axes are planes, channels, rows and "
                         f"columns in shape {data.shape} (axes {axes!r}); say which with "
                         "--z-axis / --channel-axis")
    if c is not None and axes[c] == "S" and data.shape[c] in (2, 4) and channel_axis is None:
        data = np.delete(data, -1, axis=c)  # gray + alpha, RGBA: drop alpha
    order = [a for a in (z, c) if a is not None] + rest
    singles = [i for i in range(data.ndim) if i not in order]
    image = np.transpose(data, singles + order).reshape(
        [data.shape[i] for i in order])
    if c is None:
        image = np.expand_dims(image, -3)
    if z is None:
        image = image[None]
    return image, z is not None and data.shape[z] > 1


def check_channel(channel: object) -> tuple[int, ...] | None:
    """``channel`` as a tuple of channel numbers (0 = merge all), or None.

    Raises
    ------
    TypeError
        Not None, an int or a sequence of ints.
    ValueError
        A negative number, or 0 among several.
    """
    if channel is None:
        return None
    values = (channel,) if isinstance(channel, (int, np.integer)) else channel
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
        raise TypeError(f"channel: expected an int (1 = first channel, ..., 0 = all channels "
                        f"merged to gray) or a sequence of them, got {channel!r}")
    if any(v < 0 for v in values) or (len(values) > 1 and 0 in values):
        raise ValueError(f"channel: expected channel numbers >= 1 (or a single 0 to merge all "
                         f"channels), got {channel!r}")
    return tuple(int(v) for v in values)


def select_channels(image: np.ndarray, channel: int | Sequence[int] | None, *,
                    in_channels: int, name: str = "image") -> np.ndarray:
    """Pick or merge the channels of a ``(Z, C, H, W)`` image for a model of ``in_channels``.

    Parameters
    ----------
    image : (Z, C, H, W) ndarray
    channel : int, sequence of int, or None
        ``k`` >= 1: the k-th channel (cellpose's ``--chan``: 1 = red, 2 = green, 3 = blue);
        several: those channels in that order (for a model of several channels); ``0``: the
        mean of all channels (float32; cellpose's gray). An image of one channel is taken as
        it is, whichever single channel is asked for (a folder may mix gray and colour
        images). None: the image as it is, except that a colour image whose channels are all
        equal (a gray image saved as RGB) becomes one channel.
    in_channels : int
        The model's input channels.
    name : str
        How messages name the image.

    Returns
    -------
    (Z, in_channels, H, W) ndarray

    Raises
    ------
    InputError
        A channel the image does not have, or another number of channels than the model
        takes (the message says how to choose).
    """
    channel = check_channel(channel)
    n = image.shape[1]
    if n == 1 and channel is not None and len(channel) == 1:
        channel = None  # a gray image has just the one channel (as in cellpose)
    if channel == (0,):
        image = image.mean(axis=1, keepdims=True, dtype=np.float32)
    elif channel is not None:
        if max(channel) > n:
            raise InputError(f"{name}: has {n} channel(s), got channel {max(channel)} "
                             f"(channels are numbered 1..{n}; 0 merges them)")
        image = image[:, [k - 1 for k in channel]]
    elif n > in_channels == 1 and (image == image[:, :1]).all():
        image = image[:, :1]
    if image.shape[1] != in_channels:
        raise InputError(f"{name}: the model takes {in_channels} channel(s), got "
                         f"{image.shape[1]}; pick with --channel N (1..{n}; 0 merges all "
                         f"channels to gray; in Python channel=N), or, if they are z-planes, "
                         "say so with --z-axis")
    return image
