/**
 * Locates the files of a Hugging Face model: in a directory the user names, in the local hub
 * cache, or by downloading them from the hub into that cache.
 *
 * The cache uses the layout of the Python `huggingface_hub` library (0.8 and later), so this
 * program and Python tools reuse each other's downloads:
 *
 *   <cache>/models--<org>--<name>/
 *     refs/<revision>             commit hash that the revision (branch or tag) resolved to
 *     blobs/<etag>                file content, named by its ETag (the sha256 for LFS files)
 *     blobs/<etag>.incomplete     partial download, resumed with an HTTP Range request
 *     snapshots/<commit>/<file>   relative symlink to ../../blobs/<etag>, or a copy where
 *                                 symlinks cannot be created
 *   <cache>/.locks/models--<org>--<name>/<etag>.lock   held while that blob downloads
 *
 * <cache> is $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
 * ~/.cache/huggingface/hub.
 *
 * A download first sends HEAD to `{endpoint}/{repo}/resolve/{revision}/{file}` for the commit
 * (X-Repo-Commit), the blob name (X-Linked-Etag, else ETag) and the size (X-Linked-Size, else
 * Content-Length), then GETs the file. Same-origin redirects are followed (renamed repos). A
 * cross-origin redirect, which the hub sends for LFS files stored on a CDN, ends the HEAD, and its
 * Location becomes the GET URL. The access token goes only to the endpoint's origin.
 */

import { createHash, type Hash } from "node:crypto";
import { homedir } from "node:os";
import { basename, dirname, join, posix, relative, resolve } from "node:path";

import { ProgressBar } from "../util/progress.ts";
import { atomicWriteFile, temporaryPathFor, writeAll } from "./atomic.ts";

/** Hub used when neither the `endpoint` option nor $HF_ENDPOINT is set. */
export const DEFAULT_ENDPOINT = "https://huggingface.co";

/**
 * Seconds that a HEAD request, or a GET without receiving any bytes, may take. The defaults
 * match huggingface_hub's HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT, which override them.
 */
const DEFAULT_HEAD_TIMEOUT_S = 10;
const DEFAULT_IDLE_TIMEOUT_S = 10;

const MAX_REDIRECTS = 10;
const COMMIT_HASH = /^[0-9a-f]{40}$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;
const SAFE_PATH_SEGMENT = /^[A-Za-z0-9_.-]+$/;

/** Progress of one file download. `receivedBytes` includes bytes kept from an earlier attempt. */
export interface DownloadProgress {
  file: string;
  receivedBytes: number;
  /** File size, when the server reports it. */
  totalBytes?: number;
  /** True on the last event for the file, after it is complete and verified. */
  done: boolean;
}

export interface ResolveModelOptions {
  /** Files the model needs, relative to the repository root, e.g. "config.json". */
  files: string[];
  /** Files used when present. A download skips those the hub does not have (HTTP 404). */
  optional?: string[];
  /** Directory the user named on the command line. When set, the cache and hub are not used. */
  explicitDir?: string;
  /** Command-line option that sets `explicitDir`, e.g. "--clip", quoted in error messages. */
  dirOption?: string;
  /** Branch, tag or commit hash. Default "main". */
  revision?: string;
  /** Hub base URL. Default $HF_ENDPOINT, else https://huggingface.co. */
  endpoint?: string;
  /** Never contact the hub. Also enabled by HF_HUB_OFFLINE=1 (or ON, YES, TRUE). */
  offline?: boolean;
  /** Cache root, overriding $HF_HUB_CACHE and $HF_HOME. */
  cacheDir?: string;
  /** Receives download progress. Without it, progress is written to stderr. */
  onProgress?: (progress: DownloadProgress) => void;
  /** Receives notes such as a resumed download. Default: console.error. */
  log?: (message: string) => void;
}

/** Raised when the model files cannot be found or downloaded. The message lists where to put them. */
export class ModelFilesError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ModelFilesError";
  }
}

/** A failed HTTP request, a file missing on the hub, or a download that failed verification. */
class DownloadFailure extends Error {}

// ---------------------------------------------------------------------------------------------
// Public entry points.
// ---------------------------------------------------------------------------------------------

/**
 * Returns a directory that contains `options.files`: `explicitDir` when given, else a complete
 * cached snapshot, else a snapshot filled by downloading the missing files. A file
 * `X.safetensors` also counts as present when `X.safetensors.index.json` and all the shards it
 * lists are present, and a download falls back to that index when the hub has no `X.safetensors`.
 *
 * Throws ModelFilesError with the missing files and where to put them. A cache hit sends no
 * request, so a branch such as "main" stays at the commit cached first until its snapshot loses
 * a file or the cache is removed.
 */
export async function resolveModelDir(
  repoId: string,
  options: ResolveModelOptions,
): Promise<string> {
  validateRepoId(repoId);
  if (options.files.length === 0) {
    throw new ModelFilesError(`no required files given for model ${repoId}`);
  }
  const revision = options.revision ?? "main";
  validateRevision(revision);
  for (const file of [...options.files, ...(options.optional ?? [])]) validateRepoFile(file);

  if (options.explicitDir !== undefined) {
    return await checkExplicitDir(repoId, options.explicitDir, options);
  }

  const cacheRoot = resolve(options.cacheDir ?? hubCacheDir());
  const repoDir = repoCacheDir(repoId, cacheRoot);
  const cached = await findCachedSnapshot(repoId, options.files, { revision, cacheDir: cacheRoot });
  if (cached.path !== undefined) return cached.path;

  const offlineReason = offlineModeReason(options.offline);
  const messageDetails = {
    repoId,
    repoDir,
    revision,
    files: options.files,
    dirOption: options.dirOption,
  };
  if (offlineReason !== undefined) {
    throw new ModelFilesError(
      notFoundMessage({ ...messageDetails, cacheState: cached.state, failure: offlineReason }),
    );
  }

  const context: DownloadContext = {
    repoId,
    repoDir,
    cacheRoot,
    requestedRevision: revision,
    urlRevision: revision,
    client: new HubClient(resolveEndpoint(options.endpoint), readToken()),
    onProgress: options.onProgress ?? createStderrProgress(),
    log: options.log ?? ((message) => console.error(message)),
  };
  try {
    return await downloadSnapshot(context, options.files, options.optional ?? []);
  } catch (error) {
    if (!(error instanceof DownloadFailure)) throw error;
    const failure = `downloading failed (${error.message})`;
    throw new ModelFilesError(
      notFoundMessage({ ...messageDetails, cacheState: cached.state, failure }),
      { cause: error },
    );
  }
}

/**
 * Returns the hub cache root: $HF_HUB_CACHE, else $HF_HOME/hub, else
 * $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
 */
export function hubCacheDir(): string {
  const hubCache = Deno.env.get("HF_HUB_CACHE");
  if (hubCache) return hubCache;
  return join(hfHomeDir(), "hub");
}

/** Returns the cache folder of a model repository, e.g. `<cache>/models--openai--clip-vit-base-patch32`. */
export function repoCacheDir(repoId: string, cacheDir: string = hubCacheDir()): string {
  return join(cacheDir, `models--${repoId.replaceAll("/", "--")}`);
}

/** Result of a cache lookup. `state` describes what was found, for error messages. */
export interface CacheLookup {
  path?: string;
  state: string;
}

/**
 * Looks up the snapshot that `revision` names in the cache, through `refs/<revision>` or, for a
 * commit hash, directly. Returns its path only when it contains all `files`.
 */
export async function findCachedSnapshot(
  repoId: string,
  files: string[],
  options: { revision?: string; cacheDir?: string } = {},
): Promise<CacheLookup> {
  const revision = options.revision ?? "main";
  const repoDir = repoCacheDir(repoId, resolve(options.cacheDir ?? hubCacheDir()));
  const refPath = join(repoDir, "refs", revision);

  let commit: string | undefined;
  try {
    commit = (await Deno.readTextFile(refPath)).trim();
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  if (commit === undefined && COMMIT_HASH.test(revision)) commit = revision;
  if (commit === undefined) {
    return { state: `nothing in the cache at ${repoDir} (no refs/${revision})` };
  }
  if (!SAFE_PATH_SEGMENT.test(commit) || commit === "." || commit === "..") {
    return {
      state: `the cache file ${refPath} contains an invalid commit ${JSON.stringify(commit)}`,
    };
  }

  const snapshotDir = join(repoDir, "snapshots", commit);
  if (!(await isDirectory(snapshotDir))) {
    return { state: `nothing in the cache at ${repoDir} (no snapshots/${commit})` };
  }
  const missing = await findMissingFiles(snapshotDir, files);
  if (missing.length > 0) {
    return { state: `the cached snapshot ${snapshotDir} lacks ${missing.join(", ")}` };
  }
  return { path: snapshotDir, state: `cached snapshot ${snapshotDir}` };
}

// ---------------------------------------------------------------------------------------------
// Explicit directories and local file checks.
// ---------------------------------------------------------------------------------------------

async function checkExplicitDir(
  repoId: string,
  explicitDir: string,
  options: ResolveModelOptions,
): Promise<string> {
  const directory = resolve(explicitDir);
  const label = options.dirOption ? `${options.dirOption} directory` : "model directory";
  if (!(await isDirectory(directory))) {
    throw new ModelFilesError(
      `${label} ${directory} for model ${repoId} does not exist or is not a directory`,
    );
  }
  const missing = await findMissingFiles(directory, options.files);
  if (missing.length > 0) {
    throw new ModelFilesError(
      `${label} ${directory} is missing ${missing.join(", ")} ` +
        `(model ${repoId} needs ${describeFiles(options.files)})`,
    );
  }
  return directory;
}

/**
 * Returns the entries of `files` that `directory` lacks. Symlinks are followed, so a link to a
 * deleted blob counts as missing. `X.safetensors` counts as present when its index and every
 * shard the index lists are present.
 */
async function findMissingFiles(directory: string, files: string[]): Promise<string[]> {
  const missing: string[] = [];
  for (const file of files) {
    if (await isFile(join(directory, file))) continue;
    if (file.endsWith(".safetensors") && (await hasCompleteShards(directory, file))) continue;
    missing.push(file);
  }
  return missing;
}

async function hasCompleteShards(directory: string, file: string): Promise<boolean> {
  const indexName = `${file}.index.json`;
  const indexPath = join(directory, indexName);
  if (!(await isFile(indexPath))) return false;
  let shards: string[];
  try {
    shards = parseShardNames(await Deno.readTextFile(indexPath), indexName);
  } catch {
    // A damaged index counts as missing, so a download can replace it.
    return false;
  }
  for (const shard of shards) {
    if (!(await isFile(join(directory, shard)))) return false;
  }
  return true;
}

/**
 * Returns the shard files that a safetensors index lists in `weight_map`, as paths relative to
 * the repository root, in first-seen order.
 */
function parseShardNames(indexText: string, indexName: string): string[] {
  const index = JSON.parse(indexText);
  const weightMap = index?.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new Error(`${indexName} has no weight_map object`);
  }
  const indexFolder = posix.dirname(indexName);
  const shards = new Set<string>();
  for (const [tensor, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string") {
      throw new Error(`${indexName}: weight_map entry ${tensor} is not a file name`);
    }
    const path = indexFolder === "." ? shard : posix.join(indexFolder, shard);
    validateRepoFile(path);
    shards.add(path);
  }
  return [...shards];
}

// ---------------------------------------------------------------------------------------------
// Downloading into the cache.
// ---------------------------------------------------------------------------------------------

interface DownloadContext {
  repoId: string;
  repoDir: string;
  cacheRoot: string;
  requestedRevision: string;
  /** Revision put in URLs. Pinned to the commit hash after the first response. */
  urlRevision: string;
  client: HubClient;
  onProgress: (progress: DownloadProgress) => void;
  log: (message: string) => void;
  commit?: string;
  snapshotDir?: string;
}

/** Downloads the required files that the snapshot lacks, then the optional ones, and writes the ref. */
async function downloadSnapshot(
  context: DownloadContext,
  files: string[],
  optional: string[],
): Promise<string> {
  for (const file of files) {
    const result = await fetchIntoSnapshot(context, file);
    if (result.found) continue;
    if (!file.endsWith(".safetensors")) {
      throw new DownloadFailure(`${file} not found at ${result.url} (HTTP 404)`);
    }
    await fetchShardedCheckpoint(context, file, result.url);
  }

  for (const file of optional) {
    try {
      await fetchIntoSnapshot(context, file);
    } catch (error) {
      if (!(error instanceof DownloadFailure)) throw error;
      context.log(`warning: skipping optional file ${file} of ${context.repoId}: ${error.message}`);
    }
  }

  // Files were requested, so the first response set the commit and snapshot directory.
  const commit = context.commit!;
  const snapshotDir = context.snapshotDir!;
  const missing = await findMissingFiles(snapshotDir, files);
  if (missing.length > 0) {
    throw new DownloadFailure(
      `${missing.join(", ")} still missing in ${snapshotDir} after download`,
    );
  }
  if (commit !== context.requestedRevision) {
    const refPath = join(context.repoDir, "refs", context.requestedRevision);
    await Deno.mkdir(dirname(refPath), { recursive: true });
    await atomicWriteFile(refPath, commit);
  }
  return snapshotDir;
}

/** Downloads `X.safetensors.index.json` and its shards after the hub returned 404 for `X.safetensors`. */
async function fetchShardedCheckpoint(
  context: DownloadContext,
  file: string,
  fileUrl: string,
): Promise<void> {
  const indexName = `${file}.index.json`;
  const index = await fetchIntoSnapshot(context, indexName);
  if (!index.found) {
    throw new DownloadFailure(
      `${file} not found at ${fileUrl} (HTTP 404), and no sharded index at ${index.url} (HTTP 404)`,
    );
  }
  const indexPath = join(context.snapshotDir!, indexName);
  let shards: string[];
  try {
    shards = parseShardNames(await Deno.readTextFile(indexPath), indexName);
  } catch (error) {
    throw new DownloadFailure(`invalid sharded index ${indexPath}: ${errorText(error)}`);
  }
  for (const shard of shards) {
    const result = await fetchIntoSnapshot(context, shard);
    if (!result.found) {
      throw new DownloadFailure(
        `shard ${shard} listed in ${indexName} not found at ${result.url} (HTTP 404)`,
      );
    }
  }
}

type FetchResult = { found: true } | { found: false; url: string };

/**
 * Puts one repository file into the snapshot: skipped when the snapshot has it, linked when its
 * blob is cached, downloaded otherwise. Returns `found: false` when the hub returns 404 for it.
 */
async function fetchIntoSnapshot(context: DownloadContext, file: string): Promise<FetchResult> {
  if (context.snapshotDir !== undefined && (await isFile(join(context.snapshotDir, file)))) {
    return { found: true };
  }

  const url = fileUrl(context, file);
  const metadata = await context.client.head(url);
  if (metadata === undefined) return { found: false, url };

  if (context.commit === undefined) {
    const commit = metadata.commit ?? context.requestedRevision;
    if (!SAFE_PATH_SEGMENT.test(commit) || commit === "." || commit === "..") {
      throw new DownloadFailure(
        metadata.commit === undefined
          ? `${url} sent no X-Repo-Commit header, and revision ${context.requestedRevision} cannot name a snapshot folder`
          : `${url} sent an invalid X-Repo-Commit header ${JSON.stringify(commit)}`,
      );
    }
    context.commit = commit;
    context.snapshotDir = join(context.repoDir, "snapshots", commit);
    // Later files come from the same commit even if the branch moves during the download.
    if (COMMIT_HASH.test(commit)) context.urlRevision = commit;
    if (await isFile(join(context.snapshotDir, file))) return { found: true };
  }

  const blobPath = await ensureBlob(context, file, metadata);
  await linkIntoSnapshot(blobPath, join(context.snapshotDir!, file));
  return { found: true };
}

function fileUrl(context: DownloadContext, file: string): string {
  const path = file.split("/").map(encodeURIComponent).join("/");
  const revision = encodeURIComponent(context.urlRevision);
  return `${context.client.endpoint}/${context.repoId}/resolve/${revision}/${path}`;
}

/**
 * Returns the path of the file's blob, downloading it under the blob's lock unless it is cached.
 * Without a usable ETag the partial file is named after the commit and path, and the finished
 * blob after the sha256 of its content.
 */
async function ensureBlob(
  context: DownloadContext,
  file: string,
  metadata: FileMetadata,
): Promise<string> {
  const blobsDir = join(context.repoDir, "blobs");
  await Deno.mkdir(blobsDir, { recursive: true });
  const blobName = metadata.etag !== undefined && SAFE_PATH_SEGMENT.test(metadata.etag) &&
      !metadata.etag.startsWith(".")
    ? metadata.etag
    : undefined;
  const partialStem = blobName ?? `pending-${sha256Text(`${context.commit}/${file}`)}`;

  if (blobName !== undefined && (await isFile(join(blobsDir, blobName)))) {
    return join(blobsDir, blobName);
  }

  const lockPath = join(
    context.cacheRoot,
    ".locks",
    basename(context.repoDir),
    `${partialStem}.lock`,
  );
  await Deno.mkdir(dirname(lockPath), { recursive: true });
  const lock = await Deno.open(lockPath, { create: true, write: true });
  try {
    await lock.lock(true);
    // Another process may have finished this blob while this one waited for the lock.
    if (blobName !== undefined && (await isFile(join(blobsDir, blobName)))) {
      return join(blobsDir, blobName);
    }
    const partialPath = join(blobsDir, `${partialStem}.incomplete`);
    // NOTE: a 64-digit hex ETag is taken to be the content's sha256, as the hub's LFS ETags
    // are. A server that uses such ETags for something else fails this check on every download.
    const expectedSha256 = blobName !== undefined && SHA256_HEX.test(blobName)
      ? blobName
      : undefined;
    const contentSha256 = await downloadToPartialFile(context, {
      file,
      url: metadata.downloadUrl,
      partialPath,
      expectedSize: metadata.size,
      expectedSha256,
    });
    const blobPath = join(blobsDir, blobName ?? contentSha256);
    await Deno.rename(partialPath, blobPath);
    return blobPath;
  } finally {
    lock.close();
  }
}

interface PartialDownload {
  file: string;
  url: string;
  partialPath: string;
  expectedSize?: number;
  expectedSha256?: string;
}

/**
 * Completes `partialPath` from `url`, resuming from its current length with a Range request.
 * A 200 response restarts the file and a 206 response is appended. Returns the sha256 of the
 * whole file. A network failure keeps the partial file for the next attempt. A file that fails
 * verification (wrong length or sha256) is deleted.
 */
async function downloadToPartialFile(
  context: DownloadContext,
  download: PartialDownload,
): Promise<string> {
  const { file, url, partialPath, expectedSize } = download;
  const output = await Deno.open(partialPath, { create: true, read: true, write: true });
  try {
    let offset = (await output.stat()).size;
    if (expectedSize !== undefined && offset > expectedSize) {
      context.log(
        `${file}: partial file ${partialPath} is longer than ${expectedSize} bytes, restarting`,
      );
      await output.truncate(0);
      offset = 0;
    }
    const hash = createHash256();
    if (offset > 0) await hashFilePrefix(output, offset, hash);

    if (expectedSize === undefined || offset < expectedSize) {
      let result = await receiveBody(context, download, output, offset, hash);
      if (result === "restart") {
        await output.truncate(0);
        hash.reset();
        result = await receiveBody(context, download, output, 0, hash);
      }
      if (result === "restart") {
        throw new DownloadFailure(`${url} rejected a download from byte 0`);
      }
      offset = result;
    }

    if (expectedSize !== undefined && offset !== expectedSize) {
      await removeQuietly(partialPath);
      throw new DownloadFailure(
        `${file} from ${url} has ${offset} bytes, expected ${expectedSize}; the partial file was deleted`,
      );
    }
    const digest = hash.digest();
    if (download.expectedSha256 !== undefined && digest !== download.expectedSha256) {
      await removeQuietly(partialPath);
      throw new DownloadFailure(
        `${file} from ${url} has sha256 ${digest}, expected ${download.expectedSha256}; the partial file was deleted`,
      );
    }
    await output.sync();
    context.onProgress({
      file,
      receivedBytes: offset,
      totalBytes: expectedSize ?? offset,
      done: true,
    });
    return digest;
  } finally {
    output.close();
  }
}

/**
 * Sends one GET (with a Range header when `offset` > 0) and writes the body into `output`.
 * Returns the new file length, or "restart" when the partial file must be discarded first
 * (416, or a 206 that starts elsewhere than `offset`).
 */
async function receiveBody(
  context: DownloadContext,
  download: PartialDownload,
  output: Deno.FsFile,
  offset: number,
  hash: IncrementalHash,
): Promise<number | "restart"> {
  const { file, url, expectedSize } = download;
  const headers: Record<string, string> = { "accept-encoding": "identity" };
  if (offset > 0) headers.range = `bytes=${offset}-`;
  const response = await context.client.get(url, headers);
  try {
    if (response.status === 416) {
      context.log(`${file}: server rejected resuming at byte ${offset}, restarting`);
      return "restart";
    }
    if (response.status === 206) {
      const start = parseContentRangeStart(response.headers.get("content-range"));
      if (start !== offset) {
        context.log(`${file}: server sent a range starting at ${start}, not ${offset}, restarting`);
        return "restart";
      }
      context.log(`${file}: resuming at byte ${offset}`);
    } else if (response.status === 200) {
      if (offset > 0) {
        context.log(`${file}: server ignored the Range request, downloading from byte 0`);
        await output.truncate(0);
        hash.reset();
        offset = 0;
      }
    } else {
      throw new DownloadFailure(
        `GET ${url} returned HTTP ${response.status}${errorHeader(response)}`,
      );
    }

    const bodyLength = parseLength(response.headers.get("content-length"));
    const totalBytes = expectedSize ?? (bodyLength === undefined ? undefined : offset + bodyLength);
    await output.seek(offset, Deno.SeekMode.Start);
    let received = 0;
    try {
      for await (const chunk of response.chunks()) {
        await writeAll(output, chunk);
        hash.update(chunk);
        received += chunk.length;
        context.onProgress({ file, receivedBytes: offset + received, totalBytes, done: false });
      }
    } catch (error) {
      const reason = error instanceof DownloadFailure ? error.message : errorText(error);
      throw new DownloadFailure(
        `downloading ${file} from ${url} stopped after ${offset + received} bytes: ${reason}. ` +
          `The partial file ${download.partialPath} is kept, and the next run resumes it`,
      );
    }
    if (bodyLength !== undefined && received !== bodyLength) {
      throw new DownloadFailure(
        `downloading ${file} from ${url} received ${received} bytes, but Content-Length is ${bodyLength}. ` +
          `The partial file ${download.partialPath} is kept, and the next run resumes it`,
      );
    }
    return offset + received;
  } finally {
    await response.discard();
  }
}

/** The part of node:crypto's Hash used here, with a reset for restarted downloads. */
interface IncrementalHash {
  update(chunk: Uint8Array): void;
  reset(): void;
  digest(): string;
}

function createHash256(): IncrementalHash {
  let hash: Hash = createHash("sha256");
  return {
    update: (chunk) => void hash.update(chunk),
    reset: () => void (hash = createHash("sha256")),
    digest: () => hash.digest("hex"),
  };
}

async function hashFilePrefix(
  file: Deno.FsFile,
  length: number,
  hash: IncrementalHash,
): Promise<void> {
  await file.seek(0, Deno.SeekMode.Start);
  const buffer = new Uint8Array(1 << 20);
  let remaining = length;
  while (remaining > 0) {
    const count = await file.read(buffer.subarray(0, Math.min(buffer.length, remaining)));
    if (count === null) throw new Error(`partial file ended before byte ${length}`);
    hash.update(buffer.subarray(0, count));
    remaining -= count;
  }
}

/**
 * Points `linkPath` at `blobPath` with a relative symlink, replacing any old entry atomically.
 * Where symlinks fail (some Windows and network file systems), the blob is copied instead.
 */
async function linkIntoSnapshot(blobPath: string, linkPath: string): Promise<void> {
  await Deno.mkdir(dirname(linkPath), { recursive: true });
  const temporaryPath = temporaryPathFor(linkPath);
  try {
    await Deno.symlink(relative(dirname(linkPath), blobPath), temporaryPath);
  } catch {
    await Deno.copyFile(blobPath, temporaryPath);
  }
  try {
    await Deno.rename(temporaryPath, linkPath);
  } catch (error) {
    await removeQuietly(temporaryPath);
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP.
// ---------------------------------------------------------------------------------------------

interface FileMetadata {
  commit?: string;
  etag?: string;
  size?: number;
  downloadUrl: string;
}

/** A GET response whose body must be read or discarded, under an idle timeout. */
interface BodyResponse {
  status: number;
  headers: Headers;
  chunks(): AsyncIterable<Uint8Array>;
  discard(): Promise<void>;
}

class HubClient {
  readonly endpoint: string;
  readonly #origin: string;
  readonly #token: string | undefined;
  readonly #headTimeoutMs = timeoutFromEnv("HF_HUB_ETAG_TIMEOUT", DEFAULT_HEAD_TIMEOUT_S) * 1000;
  readonly #idleTimeoutMs = timeoutFromEnv("HF_HUB_DOWNLOAD_TIMEOUT", DEFAULT_IDLE_TIMEOUT_S) *
    1000;

  constructor(endpoint: string, token: string | undefined) {
    this.endpoint = endpoint;
    this.#origin = new URL(endpoint).origin;
    this.#token = token;
  }

  /**
   * Sends HEAD and returns the file's metadata, or undefined for a 404 that means a missing
   * file (not a missing repository or revision). Throws DownloadFailure for other errors.
   */
  async head(url: string): Promise<FileMetadata | undefined> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.#headTimeoutMs);
    try {
      let current = url;
      for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
        const response = await this.#send(
          "HEAD",
          current,
          { "accept-encoding": "identity" },
          controller.signal,
        );
        await response.body?.cancel();
        const location = response.headers.get("location");
        const isRedirect = response.status >= 300 && response.status < 400 && location !== null;
        if (isRedirect) {
          const next = new URL(location, current);
          if (next.origin === new URL(current).origin) {
            current = next.href;
            continue;
          }
          return readMetadata(response, next.href);
        }
        if (response.ok) return readMetadata(response, current);
        const errorCode = response.headers.get("x-error-code");
        if (response.status === 404 && (errorCode === null || errorCode === "EntryNotFound")) {
          return undefined;
        }
        throw new DownloadFailure(
          `HEAD ${current} returned HTTP ${response.status}${errorHeader(response)}${
            this.#authHint(response.status)
          }`,
        );
      }
      throw new DownloadFailure(`HEAD ${url} was redirected more than ${MAX_REDIRECTS} times`);
    } catch (error) {
      if (error instanceof DownloadFailure) throw error;
      if (controller.signal.aborted) {
        throw new DownloadFailure(
          `HEAD ${url} timed out after ${this.#headTimeoutMs / 1000} s (HF_HUB_ETAG_TIMEOUT)`,
        );
      }
      throw new DownloadFailure(`HEAD ${url} failed: ${errorText(error)}`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends GET, following redirects, and returns the final response with an idle timeout on its body. */
  async get(url: string, headers: Record<string, string>): Promise<BodyResponse> {
    const controller = new AbortController();
    const idleSeconds = this.#idleTimeoutMs / 1000;
    let timer = setTimeout(() => controller.abort(), this.#idleTimeoutMs);
    const restartTimer = () => {
      clearTimeout(timer);
      timer = setTimeout(() => controller.abort(), this.#idleTimeoutMs);
    };
    const timeoutFailure = () =>
      new DownloadFailure(`no data received for ${idleSeconds} s (HF_HUB_DOWNLOAD_TIMEOUT)`);

    let response: Response | undefined;
    try {
      let current = url;
      for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
        response = await this.#send("GET", current, headers, controller.signal);
        const location = response.headers.get("location");
        if (response.status < 300 || response.status >= 400 || location === null) break;
        await response.body?.cancel();
        response = undefined;
        current = new URL(location, current).href;
      }
      if (response === undefined) {
        throw new DownloadFailure(`GET ${url} was redirected more than ${MAX_REDIRECTS} times`);
      }
    } catch (error) {
      clearTimeout(timer);
      if (error instanceof DownloadFailure) throw error;
      if (controller.signal.aborted) {
        throw new DownloadFailure(`GET ${url} failed: ${timeoutFailure().message}`);
      }
      throw new DownloadFailure(`GET ${url} failed: ${errorText(error)}`);
    }

    const body = response.body;
    let consumed = body === null;
    return {
      status: response.status,
      headers: response.headers,
      async *chunks() {
        if (body === null) return;
        restartTimer();
        try {
          for await (const chunk of body) {
            restartTimer();
            yield chunk;
          }
        } catch (error) {
          if (controller.signal.aborted) throw timeoutFailure();
          throw error;
        } finally {
          consumed = true;
          clearTimeout(timer);
        }
      },
      async discard() {
        clearTimeout(timer);
        if (!consumed && body !== null) await body.cancel().catch(() => {});
        consumed = true;
      },
    };
  }

  #send(
    method: string,
    url: string,
    headers: Record<string, string>,
    signal: AbortSignal,
  ): Promise<Response> {
    const requestHeaders = new Headers(headers);
    // The token goes only to the hub itself, never to a CDN that a redirect points to.
    if (this.#token !== undefined && new URL(url).origin === this.#origin) {
      requestHeaders.set("authorization", `Bearer ${this.#token}`);
    }
    return fetch(url, { method, headers: requestHeaders, redirect: "manual", signal });
  }

  #authHint(status: number): string {
    if (status !== 401 && status !== 403) return "";
    return this.#token === undefined
      ? ". The repository may be private or gated: set HF_TOKEN to an access token that can read it"
      : ". Check that the access token in HF_TOKEN (or the token file) can read this repository";
  }
}

function readMetadata(response: Response, downloadUrl: string): FileMetadata {
  const headers = response.headers;
  const etag = normalizeEtag(headers.get("x-linked-etag") ?? headers.get("etag"));
  // A redirect's own Content-Length measures the redirect body, not the file.
  const size = parseLength(headers.get("x-linked-size")) ??
    (response.ok ? parseLength(headers.get("content-length")) : undefined);
  return { commit: headers.get("x-repo-commit") ?? undefined, etag, size, downloadUrl };
}

/** Strips the weak-validator prefix and quotes: `W/"abc"` becomes `abc`. */
function normalizeEtag(etag: string | null): string | undefined {
  if (etag === null) return undefined;
  const value = etag.replace(/^W\//, "").replace(/^"|"$/g, "");
  return value === "" ? undefined : value;
}

function parseLength(value: string | null): number | undefined {
  if (value === null || !/^\d+$/.test(value.trim())) return undefined;
  return Number(value.trim());
}

/** Returns the first byte of `Content-Range: bytes <first>-<last>/<total>`, or undefined. */
function parseContentRangeStart(value: string | null): number | undefined {
  const match = value?.match(/^bytes (\d+)-\d+\/(\d+|\*)$/);
  return match ? Number(match[1]) : undefined;
}

/** Formats the hub's X-Error-Message header, which HEAD responses carry in place of a body. */
function errorHeader(response: Response | BodyResponse): string {
  const message = response.headers.get("x-error-message");
  return message ? `: ${message}` : "";
}

// ---------------------------------------------------------------------------------------------
// Environment.
// ---------------------------------------------------------------------------------------------

function hfHomeDir(): string {
  const hfHome = Deno.env.get("HF_HOME");
  if (hfHome) return hfHome;
  const xdgCache = Deno.env.get("XDG_CACHE_HOME");
  return join(xdgCache || join(homedir(), ".cache"), "huggingface");
}

function resolveEndpoint(endpoint: string | undefined): string {
  const value = (endpoint ?? Deno.env.get("HF_ENDPOINT") ?? DEFAULT_ENDPOINT).replace(/\/+$/, "");
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ModelFilesError(
      `invalid hub endpoint ${JSON.stringify(value)}: expected an http(s) URL`,
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new ModelFilesError(`invalid hub endpoint ${value}: expected an http(s) URL`);
  }
  return value;
}

/** Returns $HF_TOKEN, else the token file that `huggingface-cli login` writes ($HF_TOKEN_PATH or $HF_HOME/token). */
function readToken(): string | undefined {
  const fromEnv = Deno.env.get("HF_TOKEN")?.trim();
  if (fromEnv) return fromEnv;
  const tokenPath = Deno.env.get("HF_TOKEN_PATH") || join(hfHomeDir(), "token");
  try {
    return Deno.readTextFileSync(tokenPath).trim() || undefined;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

/** Returns why downloads are disabled, or undefined when they are allowed. */
function offlineModeReason(offline: boolean | undefined): string | undefined {
  if (offline) return "offline mode is on, so nothing was downloaded";
  const value = Deno.env.get("HF_HUB_OFFLINE");
  if (value !== undefined && ["1", "ON", "YES", "TRUE"].includes(value.trim().toUpperCase())) {
    return `HF_HUB_OFFLINE=${value} is set, so nothing was downloaded`;
  }
  return undefined;
}

function timeoutFromEnv(name: string, defaultSeconds: number): number {
  const value = Deno.env.get(name);
  if (value === undefined || value.trim() === "") return defaultSeconds;
  const seconds = Number(value);
  if (!Number.isFinite(seconds) || seconds <= 0) {
    throw new ModelFilesError(`invalid ${name}=${value}: expected a positive number of seconds`);
  }
  return seconds;
}

// ---------------------------------------------------------------------------------------------
// Validation and messages.
// ---------------------------------------------------------------------------------------------

/** Accepts `name` or `org/name` with letters, digits, `_`, `-` and `.`, as the hub does. */
function validateRepoId(repoId: string): void {
  const segments = repoId.split("/");
  const valid = repoId.length <= 96 && segments.length <= 2 &&
    segments.every((segment) => SAFE_PATH_SEGMENT.test(segment) && !/^[.-]|[.-]$/.test(segment)) &&
    !repoId.includes("--") && !repoId.includes("..");
  if (!valid) {
    throw new ModelFilesError(
      `invalid model id ${
        JSON.stringify(repoId)
      }: expected NAME or ORG/NAME with letters, digits, "_", "-" and "."`,
    );
  }
}

function validateRevision(revision: string): void {
  const segments = revision.split("/");
  if (
    revision === "" ||
    segments.some((segment) => segment === "" || segment === "." || segment === "..")
  ) {
    throw new ModelFilesError(`invalid revision ${JSON.stringify(revision)}`);
  }
}

/** Rejects paths that could leave the snapshot folder: absolute, `..`, empty segments, backslashes. */
function validateRepoFile(file: string): void {
  const segments = file.split("/");
  const valid = file !== "" && !file.includes("\\") && !file.includes("\0") &&
    segments.every((segment) => segment !== "" && segment !== "." && segment !== "..");
  if (!valid) {
    throw new ModelFilesError(
      `invalid model file name ${JSON.stringify(file)}: expected a relative path`,
    );
  }
}

interface NotFoundDetails {
  repoId: string;
  repoDir: string;
  revision: string;
  files: string[];
  dirOption?: string;
  cacheState: string;
  failure: string;
}

/** Builds the one message that lists the missing files, where they were searched and where to put them. */
function notFoundMessage(details: NotFoundDetails): string {
  const { repoId, repoDir, revision, dirOption } = details;
  const noDir = dirOption ? `no ${dirOption} directory given` : "no model directory given";
  const passDir = dirOption
    ? `pass ${dirOption} DIR`
    : "pass that directory as the model directory";
  const cacheTarget = COMMIT_HASH.test(revision)
    ? `copy them to ${join(repoDir, "snapshots", revision)}/`
    : `copy them to ${join(repoDir, "snapshots")}/<any name>/ and write that name into ${
      join(repoDir, "refs", revision)
    }`;
  return `model ${repoId} not found: ${noDir}, ${details.cacheState}, and ${details.failure}. ` +
    `Put ${describeFiles(details.files)} in a directory and ${passDir}, or ${cacheTarget}.`;
}

function describeFiles(files: string[]): string {
  return files.map((file) =>
    file.endsWith(".safetensors") ? `${file} (or ${file}.index.json with its shards)` : file
  ).join(", ");
}

// ---------------------------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------------------------

/**
 * Returns a progress callback that draws one ProgressBar per file on stderr, counting bytes. A
 * file whose size the server does not report gets one line when it is done.
 */
function createStderrProgress(): (progress: DownloadProgress) => void {
  let bar: ProgressBar | undefined;
  let barFile = "";
  let shownBytes = 0;
  return (progress) => {
    const { file, receivedBytes, totalBytes, done } = progress;
    if (totalBytes === undefined) {
      if (done) console.error(`${file}: ${receivedBytes} bytes`);
      return;
    }
    if (bar === undefined || barFile !== file) {
      bar?.close();
      bar = new ProgressBar({ total: totalBytes, label: `${file} (bytes)` });
      barFile = file;
      shownBytes = 0;
    }
    // A restarted download goes back to 0, so the step can be negative.
    bar.update(receivedBytes - shownBytes);
    shownBytes = receivedBytes;
    if (done) {
      bar.close();
      bar = undefined;
    }
  };
}

function sha256Text(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.NotADirectory) {
      return false;
    }
    throw error;
  }
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.NotADirectory) {
      return false;
    }
    throw error;
  }
}

async function removeQuietly(path: string): Promise<void> {
  await Deno.remove(path).catch(() => {});
}
