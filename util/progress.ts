// A tqdm-like progress bar on stderr. On a terminal it redraws one line in place. Elsewhere
// (CI logs, files) it prints a plain line each time another tenth of the total is done.

/** Output stream for the bar, such as Deno.stderr. */
export interface ProgressStream {
  writeSync(data: Uint8Array): number;
  isTerminal(): boolean;
}

export interface ProgressOptions {
  total: number;
  label?: string;
  /** Bar width in characters (default 20). */
  width?: number;
  stream?: ProgressStream;
  /** Clock in milliseconds, replaceable by a fake one in tests. */
  now?: () => number;
}

/** Extra values shown after the timing, e.g. {loss: 1.23, "samples/s": 45}. */
export type Postfix = Record<string, number | string>;

// A terminal line is redrawn at most this often, in milliseconds (tqdm's default mininterval).
const REDRAW_INTERVAL_MS = 100;

export class ProgressBar {
  private readonly total: number;
  private readonly label: string;
  private readonly width: number;
  private readonly stream: ProgressStream;
  private readonly now: () => number;
  private readonly terminal: boolean;
  private readonly start: number;
  private count = 0;
  private postfix: Postfix = {};
  private lastDraw = -Infinity;
  private lastTenth = 0;
  private printedCount = -1;

  constructor(options: ProgressOptions) {
    this.total = options.total;
    this.label = options.label ?? "";
    this.width = options.width ?? 20;
    this.stream = options.stream ?? Deno.stderr;
    this.now = options.now ?? (() => performance.now());
    this.terminal = this.stream.isTerminal();
    this.start = this.now();
  }

  /** Adds `n` finished units and replaces the postfix values when given. */
  update(n = 1, postfix?: Postfix): void {
    this.count += n;
    if (postfix) this.postfix = postfix;
    if (this.terminal) {
      const finished = this.count >= this.total;
      if (finished || this.now() - this.lastDraw >= REDRAW_INTERVAL_MS) this.redraw();
      return;
    }
    const tenth = this.total > 0
      ? Math.floor((10 * Math.min(this.count, this.total)) / this.total)
      : 10;
    if (tenth > this.lastTenth) {
      this.lastTenth = tenth;
      this.printLine();
    }
  }

  /** Draws the final state and ends the line. */
  close(): void {
    if (this.terminal) {
      this.redraw();
      this.write("\n");
    } else if (this.printedCount !== this.count) {
      this.printLine();
    }
  }

  /** Renders the bar as one line of text without control characters. */
  render(): string {
    const fraction = this.total > 0 ? Math.min(1, this.count / this.total) : 1;
    const percent = `${Math.floor(fraction * 100)}%`.padStart(4);
    const filled = Math.floor(fraction * this.width);
    const bar = "█".repeat(filled) + " ".repeat(this.width - filled);
    const elapsed = (this.now() - this.start) / 1000;
    const remaining = this.count > 0
      ? formatDuration((elapsed / this.count) * Math.max(0, this.total - this.count))
      : "?";
    const extras = Object.entries(this.postfix).map(([key, value]) =>
      `, ${key}=${formatValue(key, value)}`
    ).join("");
    const prefix = this.label ? `${this.label} ` : "";
    return `${prefix}${percent} |${bar}| ${this.count}/${this.total} [${
      formatDuration(elapsed)
    }<${remaining}${extras}]`;
  }

  private redraw(): void {
    this.lastDraw = this.now();
    this.write(`\r${this.render()}\x1b[K`);
  }

  private printLine(): void {
    this.printedCount = this.count;
    this.write(`${this.render()}\n`);
  }

  private write(text: string): void {
    this.stream.writeSync(new TextEncoder().encode(text));
  }
}

/** Seconds as mm:ss, or h:mm:ss from one hour on. */
export function formatDuration(seconds: number): string {
  const whole = Math.floor(seconds);
  const hours = Math.floor(whole / 3600);
  const minutes = String(Math.floor((whole % 3600) / 60)).padStart(2, "0");
  const secs = String(whole % 60).padStart(2, "0");
  return hours > 0 ? `${hours}:${minutes}:${secs}` : `${minutes}:${secs}`;
}

// Rates (keys ending in "/s") get 1 decimal, other fractional values 4, integers none.
function formatValue(key: string, value: number | string): string {
  if (typeof value === "string") return value;
  if (key.endsWith("/s")) return value.toFixed(1);
  return Number.isInteger(value) ? String(value) : value.toFixed(4);
}
