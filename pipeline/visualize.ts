// Caption visualisations: the photo with its generated caption drawn below it (PNG), and one
// HTML page that shows them all with the reference captions.

import { Image, TextLayout } from "imagescript";
import { join } from "node:path";

const FONT_URL = new URL("../assets/fonts/DejaVuSans.ttf", import.meta.url);
const PANEL_WIDTH = 448; // px; photos are scaled to this width
const TEXT_SIZE = 20; // px
const MARGIN = 12; // px

export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array; // RGB, 3 bytes per pixel, row-major
}

export interface Visualisation {
  imageId: string;
  image: RgbImage;
  caption: string;
  references: string[];
}

let font: Uint8Array | null = null;

// imagescript 1.3.1 encodes text for its font rasteriser with Deno.core.encode, which Deno 2
// no longer exposes; this supplies the same function from the standard TextEncoder.
function ensureTextEncoderShim(): void {
  const deno = Deno as unknown as { core?: { encode?: (s: string) => Uint8Array } };
  if (!deno.core?.encode) {
    const encoder = new TextEncoder();
    const decoder = new TextDecoder();
    deno.core = { ...(deno.core ?? {}), encode: (s: string) => encoder.encode(s), decode: (b: Uint8Array) => decoder.decode(b) } as never;
  }
}

// Renders one panel: the photo scaled to PANEL_WIDTH with the caption wrapped below it.
export async function renderPanel(image: RgbImage, caption: string): Promise<Uint8Array> {
  ensureTextEncoderShim();
  font ??= await Deno.readFile(FONT_URL);

  const photo = new Image(image.width, image.height);
  const rgba = photo.bitmap;
  for (let i = 0, j = 0; i < image.width * image.height; i++, j += 3) {
    rgba[i * 4] = image.data[j];
    rgba[i * 4 + 1] = image.data[j + 1];
    rgba[i * 4 + 2] = image.data[j + 2];
    rgba[i * 4 + 3] = 255;
  }
  photo.resize(PANEL_WIDTH, Image.RESIZE_AUTO);

  const layout = new TextLayout({ maxWidth: PANEL_WIDTH - 2 * MARGIN, wrapStyle: "word" });
  const text = await Image.renderText(font, TEXT_SIZE, caption || "(empty caption)", 0x000000ff, layout);
  const panel = new Image(PANEL_WIDTH, photo.height + text.height + 2 * MARGIN);
  panel.fill(0xffffffff);
  panel.composite(photo, 0, 0);
  panel.composite(text, MARGIN, photo.height + MARGIN);
  return await panel.encode();
}

// Writes one PNG per visualisation and index.html next to them; returns the file paths.
export async function writeVisualisations(dir: string, items: Visualisation[], title: string): Promise<string[]> {
  await Deno.mkdir(dir, { recursive: true });
  const files: string[] = [];
  const rows: string[] = [];
  for (const [i, item] of items.entries()) {
    const name = `caption_${String(i + 1).padStart(2, "0")}_${item.imageId.replace(/[^A-Za-z0-9_.-]/g, "_")}.png`;
    await Deno.writeFile(join(dir, name), await renderPanel(item.image, item.caption));
    files.push(join(dir, name));
    const refs = item.references.map((r) => `<li>${escapeHtml(r)}</li>`).join("");
    rows.push(
      `<figure><img src="${name}" alt="${escapeHtml(item.caption)}"><figcaption>` +
        `<p><b>generated:</b> ${escapeHtml(item.caption)}</p><p><b>references:</b></p><ul>${refs}</ul></figcaption></figure>`,
    );
  }
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>body{font-family:sans-serif;margin:24px}main{display:flex;flex-wrap:wrap;gap:24px}
figure{width:${PANEL_WIDTH}px;margin:0}img{width:100%}figcaption{font-size:14px}</style></head>
<body><h1>${escapeHtml(title)}</h1><main>
${rows.join("\n")}
</main></body></html>
`;
  const indexPath = join(dir, "index.html");
  await Deno.writeTextFile(indexPath, html);
  files.push(indexPath);
  return files;
}

function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}
