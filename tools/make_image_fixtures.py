"""Generate the image test fixtures under tests/fixtures/images/.

Run it by hand. The outputs are committed, so the tests never run Python:

    python3 -m venv tools/fixtures/.venv
    tools/fixtures/.venv/bin/pip install pillow==12.3.0 transformers==5.18.0 numpy
    tools/fixtures/.venv/bin/python tools/make_image_fixtures.py

Outputs:
  * small images in the colour types that data/image.ts must decode, plus broken files;
  * expected.json: for each decodable image, the pixels Pillow's Image.convert("RGB")
    returns (row-major RGB bytes), and the Pillow and transformers versions used;
  * clip_*: source images and the 224x224 uint8 crop that transformers'
    CLIPImageProcessor (PIL backend) feeds into rescale/normalize. The crop is recovered
    from the processor's float output through the per-channel table of the 256 possible
    normalized values, which expected.json also stores, so the tests check resize, crop
    and normalization exactly without storing 600 KB of floats per image.
"""

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL
import transformers
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "images"


def pattern(width, height, channels, seed):
    """Deterministic pseudo-random bytes (an LCG), so reruns write identical files."""
    state = seed
    data = bytearray()
    for _ in range(width * height * channels):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        data.append((state >> 16) & 0xFF)
    return bytes(data)


def png_chunk(kind, payload):
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def write_raw_png(path, width, height, bit_depth, color_type, rows, interlaced=False):
    """Write a PNG from unfiltered scanline bytes. Pillow cannot write 16-bit RGB or Adam7."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 1 if interlaced else 0)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    bytes_per_pixel = channels * bit_depth // 8
    raw = bytearray()
    if not interlaced:
        for row in rows:
            raw.append(0)
            raw += row
    else:
        # Adam7 passes: (x0, y0, dx, dy).
        for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]:
            if x0 >= width or y0 >= height:
                continue
            for y in range(y0, height, dy):
                raw.append(0)
                for x in range(x0, width, dx):
                    raw += rows[y][x * bytes_per_pixel:(x + 1) * bytes_per_pixel]
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
    data += png_chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + png_chunk(b"IEND", b"")
    path.write_bytes(data)


def rgb_list(image):
    return list(image.convert("RGB").tobytes())


def make_mode_fixtures():
    width, height = 7, 5
    names = []

    Image.frombytes("L", (width, height), pattern(width, height, 1, 1)).save(OUT / "gray.png")
    Image.frombytes("LA", (width, height), pattern(width, height, 2, 2)).save(OUT / "gray_alpha.png")
    Image.frombytes("RGBA", (width, height), pattern(width, height, 4, 3)).save(OUT / "rgba.png")
    Image.frombytes("RGB", (width, height), pattern(width, height, 3, 4)).save(OUT / "rgb.png")
    names += ["gray.png", "gray_alpha.png", "rgba.png", "rgb.png"]

    palette = Image.frombytes("P", (width, height), bytes(v % 6 for v in pattern(width, height, 1, 5)))
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 200, 10, 30, 40, 50, 128, 128, 128])
    palette.save(OUT / "palette.png", transparency=2)
    palette.save(OUT / "palette_4bit.png", bits=4)
    Image.frombytes("1", (width, height), pattern(width, height, 1, 6)).save(OUT / "bilevel.png")
    names += ["palette.png", "palette_4bit.png", "bilevel.png"]

    # 16-bit grayscale: Pillow opens it as mode I;16, whose convert("RGB") clips at 255, so
    # half of the samples stay below 256 to show the difference from taking the high byte.
    gray16 = bytearray(pattern(width, height, 2, 7))
    for index in range(0, len(gray16), 4):
        gray16[index] = 0
    Image.frombytes("I;16B", (width, height), bytes(gray16)).save(OUT / "gray16.png")
    names.append("gray16.png")
    gray16_high_bytes = [value for value in gray16[0::2] for _ in range(3)]

    row_bytes = width * 3 * 2
    rgb16 = pattern(width, height, 6, 8)
    rows = [rgb16[y * row_bytes:(y + 1) * row_bytes] for y in range(height)]
    write_raw_png(OUT / "rgb16.png", width, height, 16, 2, rows)
    names.append("rgb16.png")

    row_bytes = width * 2 * 2
    la16 = pattern(width, height, 4, 9)
    rows = [la16[y * row_bytes:(y + 1) * row_bytes] for y in range(height)]
    write_raw_png(OUT / "gray_alpha16.png", width, height, 16, 4, rows)
    names.append("gray_alpha16.png")

    iw, ih = 11, 9
    interlaced = pattern(iw, ih, 3, 10)
    rows = [interlaced[y * iw * 3:(y + 1) * iw * 3] for y in range(ih)]
    write_raw_png(OUT / "interlaced.png", iw, ih, 8, 2, rows, interlaced=True)
    interlaced16 = pattern(iw, ih, 6, 11)
    rows = [interlaced16[y * iw * 6:(y + 1) * iw * 6] for y in range(ih)]
    write_raw_png(OUT / "interlaced16.png", iw, ih, 16, 2, rows, interlaced=True)
    names += ["interlaced.png", "interlaced16.png"]

    # Flat colour blocks aligned to the 8x8 JPEG grid decode to nearly the same bytes everywhere.
    blocks = Image.new("CMYK", (16, 16))
    for index, colour in enumerate([(0, 0, 0, 0), (200, 30, 10, 0), (10, 180, 40, 60), (0, 0, 0, 255)]):
        blocks.paste(colour, ((index % 2) * 8, (index // 2) * 8, (index % 2) * 8 + 8, (index // 2) * 8 + 8))
    blocks.save(OUT / "cmyk.jpg", quality=100)
    rgb_blocks = Image.new("RGB", (16, 16))
    for index, colour in enumerate([(255, 255, 255), (200, 30, 10), (10, 180, 40), (0, 0, 0)]):
        rgb_blocks.paste(colour, ((index % 2) * 8, (index // 2) * 8, (index % 2) * 8 + 8, (index // 2) * 8 + 8))
    rgb_blocks.save(OUT / "rgb.jpg", quality=100, subsampling=0)
    rgb_blocks.save(OUT / "progressive.jpg", quality=100, subsampling=0, progressive=True)
    rgb_blocks.convert("L").save(OUT / "gray.jpg", quality=100)
    names += ["cmyk.jpg", "rgb.jpg", "progressive.jpg", "gray.jpg"]

    # Noisy JPEGs with 4:2:0 chroma, where decoders differ in IDCT and chroma upsampling.
    Image.frombytes("RGB", (32, 24), pattern(32, 24, 3, 17)).save(OUT / "photo.jpg", quality=90)
    Image.frombytes("CMYK", (32, 24), pattern(32, 24, 4, 18)).save(OUT / "cmyk_photo.jpg", quality=90)
    names += ["photo.jpg", "cmyk_photo.jpg"]

    expected = {}
    for name in names:
        with Image.open(OUT / name) as image:
            expected[name] = {"mode": image.mode, "width": image.width, "height": image.height,
                              "rgb": rgb_list(image)}
    expected["gray16.png"]["high_byte_rgb"] = gray16_high_bytes
    return expected


def make_broken_fixtures():
    # A noise JPEG cut in half, which a decoder must reject rather than fill with grey rows.
    photo = Image.frombytes("RGB", (64, 48), pattern(64, 48, 3, 12))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    (OUT / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    png = buffer.getvalue()
    (OUT / "truncated.png").write_bytes(png[: len(png) // 2])
    (OUT / "empty.jpg").write_bytes(b"")
    (OUT / "not_an_image.jpg").write_text("caption: a cat sitting on a mat\n")
    corrupt = bytearray(jpeg)
    for index in range(200, 400):
        corrupt[index] = 0xFF if index % 2 else 0x00
    (OUT / "corrupt.jpg").write_bytes(bytes(corrupt))


def synthetic_scene(width, height, seed):
    """Sharp-edged coloured tiles over a gradient: ringing and clamping in bicubic show up here."""
    image = Image.new("RGB", (width, height))
    pixels = image.load()
    for y in range(height):
        for x in range(width):
            tile = ((x * 7) // max(1, width // 5) + (y * 5) // max(1, height // 4)) % 4
            base = [(250, 20, 20), (10, 240, 30), (20, 30, 250), (255, 255, 255)][tile]
            grain = ((x * 3 + y * 5 + seed) % 7) * 6
            pixels[x, y] = tuple(min(255, max(0, c - grain + (x * 255) // (4 * width))) for c in base)
    return image


def make_clip_fixtures():
    processor = CLIPImageProcessorPil()
    cases = {
        "clip_noise_37x23.png": Image.frombytes("RGB", (37, 23), pattern(37, 23, 3, 13)),
        "clip_scene_500x301.png": synthetic_scene(500, 301, 14),
        "clip_scene_41x97.png": synthetic_scene(41, 97, 15),
        "clip_scene_224x250.png": synthetic_scene(224, 250, 16),
    }
    table = None
    for name, image in cases.items():
        image.save(OUT / name)
        output = processor(images=Image.open(OUT / name), return_tensors="np")["pixel_values"][0]
        if table is None:
            table = normalization_table(processor)
        crop = np.zeros((224, 224, 3), dtype=np.uint8)
        for channel in range(3):
            values = output[channel]
            index = np.searchsorted(table[channel], values)
            index = np.clip(index, 0, 255)
            if not np.array_equal(table[channel][index], values):
                raise SystemExit(f"{name}: processor output is not one of the 256 table values")
            crop[:, :, channel] = index
        Image.fromarray(crop, "RGB").save(OUT / name.replace(".png", "_crop224.png"))
    return {"channels": [[float(v) for v in table[c]] for c in range(3)]}


def normalization_table(processor):
    """Return the processor's float32 output for every byte value, per channel.

    A 224x224 image is neither resized nor cropped, so each column of a horizontal ramp maps
    straight to one output value. Two ramps (starting at 0 and at 192) cover all 256 levels.
    """
    table = np.zeros((3, 256), dtype=np.float32)
    for start in (0, 192):
        levels = np.arange(start, start + 224) % 256
        ramp = np.tile(levels.astype(np.uint8), (224, 1))
        image = Image.fromarray(np.stack([ramp] * 3, axis=-1), "RGB")
        output = processor(images=image, return_tensors="np")["pixel_values"][0]
        table[:, levels] = output[:, 0, :]
    return table


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {"pillow": PIL.__version__, "transformers": transformers.__version__}
    expected["decode"] = make_mode_fixtures()
    make_broken_fixtures()
    expected["clip_normalization"] = make_clip_fixtures()
    (OUT / "expected.json").write_text(json.dumps(expected) + "\n")


if __name__ == "__main__":
    main()
