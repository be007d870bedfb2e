"""Image transforms shared by training and evaluation (numpy, host side)."""
import numpy as np
from PIL import Image

# OpenAI CLIP normalisation, the default everywhere open_clip users expect it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(images: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
  """uint8 [..., H, W, 3] -> float32 normalised."""
  x = images.astype(np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
  """Evaluation transform: resize the short side to `size` (bicubic), centre crop."""
  image = image.convert('RGB')
  w, h = image.size
  scale = size / min(w, h)
  image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
  w, h = image.size
  left, top = (w - size) // 2, (h - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)
