"""Backgrounds of the embedded images: synthetic patterns and photo-like scenes, 224 x 224 RGB uint8.

Patterns: plain, gradient, noise (octaves of upsampled random colours), shapes, clutter. Photo-like: `fractal`
(1/f noise, the power spectrum of natural images, mapped through a few colours), `wood` (warped rings), `fabric`
(a woven grid), `room` (a floor and a wall meeting at a horizon, lit unevenly, with furniture-like blocks) and
`bokeh` (out-of-focus lights); each photo-like one ends with a little defocus.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 224
PATTERNS = ("gradient", "noise", "shapes", "clutter", "plain")
PHOTOS = ("fractal", "wood", "fabric", "room", "bokeh")
KINDS = PATTERNS + PHOTOS


def make(rng, kinds, scenes=None):
  """One background of a kind drawn uniformly from `kinds`. Photo-like kinds come from `scenes` (a `Scenes`)
  when given: a crop of one of its images, turned, mirrored and recoloured; else they are generated here."""
  kind = str(rng.choice(kinds))
  if kind not in PHOTO:
    return pattern(rng, kind)
  if scenes is not None:
    return scenes.view(rng, kind)
  img = PHOTO[kind](rng)
  return np.array(Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5))))


class Scenes:
  """A fixed set of photo-like scenes, `per_kind` of each kind at `side` px, drawn from `seed`; `view` returns a
  224 px background from one: a random crop, one of the 8 turns and mirrors, the channels permuted and each
  channel's gain and gamma changed. Generating a scene costs about as much as rendering a hand, a view almost
  nothing; a set is the same for the same seed in every process."""

  def __init__(self, seed, per_kind=12, side=288):
    self.images = {}
    for k, kind in enumerate(PHOTOS):
      rng = np.random.default_rng([seed, 7, k])
      self.images[kind] = [
        np.array(Image.fromarray(PHOTO[kind](rng, side)).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5))))
        for _ in range(per_kind)
      ]

  def view(self, rng, kind):
    img = self.images[kind][int(rng.integers(len(self.images[kind])))]
    y, x = rng.integers(0, img.shape[0] - SIZE + 1, 2)
    img = np.rot90(img[y : y + SIZE, x : x + SIZE], int(rng.integers(4)))
    if rng.uniform() < 0.5:
      img = img[:, ::-1]
    img = np.ascontiguousarray(img[..., rng.permutation(3)])
    lut = (np.arange(256) / 255)[:, None] ** rng.uniform(0.7, 1.4, 3) * rng.uniform(0.6, 1.15, 3)
    lut = (np.clip(lut, 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.array(Image.fromarray(img).point(lut.T.ravel().tolist()))


def pattern(rng, kind):
  c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  if kind == "plain":
    img = Image.new("RGB", (SIZE, SIZE), tuple(int(c) for c in c0))
  elif kind in ("gradient", "shapes"):
    img = Image.fromarray(_ramp(rng, c0, c1))
  else:  # noise texture: octaves of upsampled random colours
    cells = rng.choice([3, 6, 12, 24, 48], size=3, replace=False)
    octave = lambda c: Image.fromarray(rng.integers(0, 256, (c, c, 3), dtype=np.uint8)).resize(
      (SIZE, SIZE), Image.BICUBIC
    )
    img = octave(cells[0])
    for k, c in enumerate(cells[1:]):
      img = Image.blend(img, octave(c), 0.5 / (k + 1))
  if kind in ("shapes", "clutter"):
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 8) if kind == "shapes" else rng.integers(12, 30)):
      fill = tuple(int(x) for x in rng.integers(0, 256, 3))
      x, y = rng.uniform(-20, SIZE + 20, 2)
      r = rng.uniform(4, 60) if kind == "shapes" else rng.uniform(2, 25)
      shape = rng.integers(4)
      if shape == 0:
        draw.ellipse([x - r, y - r * rng.uniform(0.3, 1), x + r, y + r], fill=fill)
      elif shape == 1:
        draw.rectangle([x - r, y - r * rng.uniform(0.3, 1), x + r, y + r], fill=fill)
      elif shape == 2:
        pts = [(x + r * np.cos(a), y + r * np.sin(a)) for a in np.sort(rng.uniform(0, 2 * np.pi, 5))]
        draw.polygon(pts, fill=fill)
      else:
        draw.line([x, y, *rng.uniform(0, SIZE, 2)], fill=fill, width=int(rng.integers(1, 6)))
    if rng.uniform() < 0.5:
      img = img.filter(ImageFilter.BoxBlur(rng.uniform(0.5, 2.0)))
  return np.array(img)


def _ramp(rng, c0, c1):
  """A linear colour ramp at a random angle; exact under bilinear upsampling, so built at 8 x 8."""
  ang = rng.uniform(0, 2 * np.pi)
  g = (np.arange(8) + 0.5) / 8 * 2 - 1
  t = (np.cos(ang) * g[None, :] + np.sin(ang) * g[:, None]) * 0.5 + 0.5
  low = (c0 + t[..., None] * (c1 - c0)).astype(np.uint8)
  return np.array(Image.fromarray(low).resize((SIZE, SIZE), Image.BILINEAR, box=(0.5, 0.5, 7.5, 7.5)))


def _palette(rng, n):
  """n related colours: one hue family, different lightness, as in a photographed surface."""
  base = rng.uniform(20, 235, 3)
  return np.clip(base * rng.uniform(0.4, 1.3, (n, 1)) + rng.normal(0, 18, (n, 3)), 0, 255)


def _fractal_field(rng, beta, size=SIZE):
  """Zero-mean, unit-variance noise with a 1/f^beta amplitude spectrum."""
  f = np.fft.fftfreq(size)
  r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
  r[0, 0] = 1.0
  spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / r**beta
  spectrum[0, 0] = 0
  x = np.fft.ifft2(spectrum).real
  return (x - x.mean()) / (x.std() + 1e-9)


def _colour_map(field, colours):
  """Maps a field through colours spaced evenly over its range."""
  t = np.clip((field - field.min()) / (np.ptp(field) + 1e-9), 0, 1) * (len(colours) - 1)
  i = np.minimum(t.astype(int), len(colours) - 2)
  w = (t - i)[..., None]
  return colours[i] * (1 - w) + colours[i + 1] * w


def fractal(rng, n=SIZE):
  field = _fractal_field(rng, rng.uniform(1.6, 2.4), n)
  return _colour_map(field, _palette(rng, int(rng.integers(2, 5)))).astype(np.uint8)


def wood(rng, n=SIZE):
  y, x = np.mgrid[0:n, 0:n] / n
  ang = rng.uniform(0, np.pi)
  along = np.cos(ang) * x + np.sin(ang) * y
  across = -np.sin(ang) * x + np.cos(ang) * y
  warp = _fractal_field(rng, 2.2, n) * rng.uniform(0.02, 0.06)
  rings = np.sin((across + warp + 0.15 * np.sin(along * rng.uniform(2, 6))) * rng.uniform(40, 110))
  grain = _fractal_field(rng, 1.0, n) * 0.15
  light, dark = _palette(rng, 2)
  t = np.clip(0.5 + 0.4 * rings + grain, 0, 1)[..., None]
  return (dark * (1 - t) + light * t).astype(np.uint8)


def fabric(rng, n=SIZE):
  y, x = np.mgrid[0:n, 0:n].astype(np.float64)
  ang = rng.uniform(0, np.pi)
  u, v = np.cos(ang) * x + np.sin(ang) * y, -np.sin(ang) * x + np.cos(ang) * y
  period = rng.uniform(3, 9)
  weave = np.sign(np.sin(u * np.pi / period)) * np.sign(np.sin(v * np.pi / period))
  threads = 0.5 + 0.25 * weave * np.abs(np.sin(np.where(weave > 0, u, v) * np.pi / period))
  folds = _fractal_field(rng, 2.6, n) * 0.18
  c0, c1 = _palette(rng, 2)
  t = np.clip(threads + folds, 0, 1)[..., None]
  return (c0 * (1 - t) + c1 * t).astype(np.uint8)


def room(rng, n=SIZE):
  y, x = np.mgrid[0:n, 0:n] / n
  horizon = rng.uniform(0.25, 0.75) + (x - 0.5) * rng.uniform(-0.4, 0.4)
  wall, floor = _palette(rng, 2)
  light = 1 + 0.35 * (_fractal_field(rng, 3.0, n) * 0.5 - (x - rng.uniform()) ** 2)
  floor_tex = 1 + 0.12 * _fractal_field(rng, 1.8, n)
  img = np.where((y < horizon)[..., None], wall, floor * floor_tex[..., None]) * light[..., None]
  pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(pil)
  for _ in range(rng.integers(1, 5)):  # furniture, frames, door edges
    x0, y0 = rng.uniform(-0.2, 1.0, 2) * n
    w, h = rng.uniform(0.1, 0.5, 2) * n
    draw.rectangle([x0, y0, x0 + w, y0 + h], fill=tuple(int(c) for c in _palette(rng, 1)[0]))
  return np.array(pil)


def bokeh(rng, n=SIZE):
  base = _fractal_field(rng, 2.8, n)
  img = Image.fromarray(_colour_map(base, _palette(rng, 3)).astype(np.uint8))
  layer = Image.new("RGB", (n, n))
  draw = ImageDraw.Draw(layer)
  for _ in range(rng.integers(6, 25)):
    x, y = rng.uniform(0, n, 2)
    r = rng.uniform(4, 22)
    draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.uniform(120, 255, 3)))
  layer = layer.filter(ImageFilter.GaussianBlur(rng.uniform(2, 5)))
  return np.clip(np.array(img, np.float64) + 0.6 * np.array(layer), 0, 255).astype(np.uint8)


PHOTO = {"fractal": fractal, "wood": wood, "fabric": fabric, "room": room, "bokeh": bokeh}
