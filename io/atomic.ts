/**
 * Atomic file replacement: write to a temporary file in the target's directory, fsync it,
 * rename it over the target, then fsync the directory.
 *
 * On POSIX file systems `rename` replaces the target in one step. A reader, or a process that
 * restarts after a crash, therefore finds either the old complete file or the new complete file.
 * The fsync before the rename makes the data durable first, so after a power loss the new name
 * does not point at unwritten blocks.
 *
 * A writer that is killed before the rename leaves its temporary file behind. Temporary names
 * have the form `<target>.<pid>-<random>.tmp`, so they never collide between concurrent writers
 * and can be deleted by hand once no writer is running.
 */

import { basename, dirname, join } from "node:path";

/** Bytes to write: one buffer, a string (written as UTF-8) or a sequence of chunks. */
export type FileContent =
  | Uint8Array
  | string
  | Iterable<Uint8Array>
  | AsyncIterable<Uint8Array>;

/** Returns a fresh temporary path next to `path`, so the final rename stays on one file system. */
export function temporaryPathFor(path: string): string {
  const random = crypto.getRandomValues(new Uint32Array(2));
  const suffix = `${Deno.pid}-${random[0].toString(16)}${random[1].toString(16)}`;
  return join(dirname(path), `${basename(path)}.${suffix}.tmp`);
}

/**
 * Opens a temporary file next to `path`, lets `write` fill it, then fsyncs it and renames it
 * over `path`. If `write` throws, the temporary file is removed and `path` is left untouched.
 * The new file keeps the permission bits of the file it replaces.
 */
export async function withAtomicFile(
  path: string,
  write: (file: Deno.FsFile) => Promise<void>,
): Promise<void> {
  const temporaryPath = temporaryPathFor(path);
  const file = await Deno.open(temporaryPath, { write: true, createNew: true });
  let fileOpen = true;
  try {
    await write(file);
    await file.sync();
    await copyModeIfExists(path, temporaryPath);
    file.close();
    fileOpen = false;
    await Deno.rename(temporaryPath, path);
  } catch (error) {
    if (fileOpen) file.close();
    await Deno.remove(temporaryPath).catch(() => {});
    throw error;
  }
  await syncDirectory(dirname(path));
}

/** Writes `content` to `path` atomically (see the module documentation). */
export async function atomicWriteFile(path: string, content: FileContent): Promise<void> {
  await withAtomicFile(path, async (file) => {
    if (typeof content === "string") {
      await writeAll(file, new TextEncoder().encode(content));
    } else if (content instanceof Uint8Array) {
      await writeAll(file, content);
    } else if (Symbol.asyncIterator in content) {
      for await (const chunk of content) await writeAll(file, chunk);
    } else {
      for (const chunk of content) await writeAll(file, chunk);
    }
  });
}

/** Writes `value` as JSON (indented by `indent` spaces, newline-terminated) to `path` atomically. */
export async function atomicWriteJson(path: string, value: unknown, indent = 2): Promise<void> {
  const text = JSON.stringify(value, null, indent);
  if (text === undefined) {
    throw new TypeError(`${path}: cannot write ${typeof value} as JSON`);
  }
  await atomicWriteFile(path, text + "\n");
}

/** Writes every byte of `bytes`, looping because `FsFile.write` may write fewer bytes. */
export async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    written += await file.write(bytes.subarray(written));
  }
}

async function copyModeIfExists(fromPath: string, toPath: string): Promise<void> {
  let mode: number | null;
  try {
    mode = (await Deno.stat(fromPath)).mode;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return;
    throw error;
  }
  if (mode !== null) await Deno.chmod(toPath, mode & 0o7777);
}

/**
 * Fsyncs a directory so that a rename inside it survives a power loss. Where a directory cannot
 * be opened or fsynced, the step is skipped. That weakens only the power-loss guarantee, because
 * the rename is still atomic for processes that are killed.
 */
async function syncDirectory(directory: string): Promise<void> {
  let handle: Deno.FsFile;
  try {
    handle = await Deno.open(directory, { read: true });
  } catch {
    return;
  }
  try {
    await handle.sync();
  } catch {
    // Some file systems reject fsync on a directory handle. The rename has already happened.
  } finally {
    handle.close();
  }
}
