import assert from "node:assert/strict";
import { formatDuration, ProgressBar } from "../util/progress.ts";

/** Returns a fake stream that records what the bar writes, and a clock (ms) advanced by hand. */
function fakeOutput(terminal: boolean) {
  const chunks: string[] = [];
  const clock = { ms: 0 };
  const stream = {
    writeSync: (data: Uint8Array) => {
      chunks.push(new TextDecoder().decode(data));
      return data.length;
    },
    isTerminal: () => terminal,
  };
  return { chunks, clock, stream, now: () => clock.ms, text: () => chunks.join("") };
}

Deno.test("progress non-TTY prints each tenth", () => {
  const output = fakeOutput(false);
  const bar = new ProgressBar({
    total: 100,
    label: "train",
    stream: output.stream,
    now: output.now,
  });
  for (let i = 0; i < 100; i++) {
    output.clock.ms += 120;
    bar.update(1, { loss: 1.23, "samples/s": 45 });
  }
  bar.close();
  const lines = output.text().split("\n").filter((line) => line !== "");
  assert.equal(lines.length, 10);
  // At 10 of 100 after 1.2 s: 10.8 s remain.
  assert.equal(
    lines[0],
    "train  10% |██                  | 10/100 [00:01<00:10, loss=1.2300, samples/s=45.0]",
  );
  assert.equal(
    lines[9],
    "train 100% |████████████████████| 100/100 [00:12<00:00, loss=1.2300, samples/s=45.0]",
  );
  assert.ok(!output.text().includes("\r"), "no carriage returns in logs");
});

Deno.test("progress non-TTY close prints unfinished state", () => {
  const output = fakeOutput(false);
  const bar = new ProgressBar({ total: 50, stream: output.stream, now: output.now });
  bar.update(3);
  bar.close();
  assert.equal(output.text(), "  6% |█                   | 3/50 [00:00<00:00]\n");
});

Deno.test("progress TTY redraws one line", () => {
  const output = fakeOutput(true);
  const bar = new ProgressBar({
    total: 4,
    label: "embed",
    width: 4,
    stream: output.stream,
    now: output.now,
  });
  bar.update(1);
  bar.update(1); // within 100 ms of the last redraw: skipped
  output.clock.ms += 500;
  bar.update(2, { step: 7 });
  bar.close();
  assert.deepEqual(output.chunks, [
    "\rembed  25% |█   | 1/4 [00:00<00:00]\x1b[K",
    "\rembed 100% |████| 4/4 [00:00<00:00, step=7]\x1b[K",
    "\rembed 100% |████| 4/4 [00:00<00:00, step=7]\x1b[K",
    "\n",
  ]);
});

Deno.test("progress unknown remaining time", () => {
  const output = fakeOutput(false);
  const bar = new ProgressBar({ total: 10, stream: output.stream, now: output.now });
  assert.equal(bar.render(), "  0% |                    | 0/10 [00:00<?]");
});

Deno.test("formatDuration minutes and hours", () => {
  assert.equal(formatDuration(0), "00:00");
  assert.equal(formatDuration(75.9), "01:15");
  assert.equal(formatDuration(3723), "1:02:03");
});
