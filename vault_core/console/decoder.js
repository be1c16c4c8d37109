// Message Vault's stream log format, version 1, read in the browser from docs/format.md alone: a
// second implementation of the format, independent of vault_core, that verifies every batch's
// CRC32C before showing any of it. A log is read through `source.read(start, length)`, which
// answers the bytes there (fewer, or none, past the end of the log).

const DATA_START = 65536;
const SLOT_SIZE = 16896;
const COMMIT_HEADER = 64;
const RING_ENTRY = 16;
const MAX_RING = 1024;
const BATCH_HEADER = 40;
const RECORD_HEADER = 9;
const MAX_BATCH = 67108864;
const FIRST_READ = 256 * 1024;
const MAX_READ = 4 * 1024 * 1024;
const PROBE = 64 * 1024;
const SEEK_SPAN = 1024 * 1024; // a time search probes while its range is wider, then walks headers
const LOG_ENDS = "the log ends before the committed position";
const COMMIT_MAGIC = [0x4d, 0x56, 0x43, 0xff];
const BATCH_MAGIC = [0x4d, 0x56, 0x42, 0xff];

// Keys are strict UTF-8, and a leading byte-order mark is part of the key.
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export class CorruptData extends Error {
  constructor(position, reason) {
    super(`corrupt data at position ${position}: ${reason}`);
    this.position = position;
    this.reason = reason;
  }
}

export class InvalidPosition extends Error {}

export function crc32c(bytes) {
  return globalThis.CRC32C.buf(bytes) >>> 0;
}

// u64 fields may exceed 2^53: read as BigInt, used as numbers only where they are positions and
// lengths (below 2^53 for any stream that fits in storage) or times (milliseconds: far below).
function u64(view, at) {
  const value = view.getBigUint64(at, true);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`u64 ${value} is beyond 2^53`);
  return Number(value);
}

function startsWith(bytes, at, magic) {
  return magic.every((byte, i) => bytes[at + i] === byte);
}

function viewOf(bytes) {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function slot(bytes, name) {
  if (bytes.length < COMMIT_HEADER || !startsWith(bytes, 0, COMMIT_MAGIC)) return null;
  const view = viewOf(bytes);
  const ringLength = view.getUint32(12, true);
  if (ringLength > MAX_RING || bytes.length < COMMIT_HEADER + RING_ENTRY * ringLength) return null;
  if (crc32c(bytes.subarray(8, COMMIT_HEADER + RING_ENTRY * ringLength)) !== view.getUint32(4, true)) return null;
  const version = bytes[8];
  if (version !== 1) throw new CorruptData(0, `commit slot ${name} has unknown version ${version}`);
  const ring = [];
  for (let i = 0; i < ringLength; i++) {
    const at = COMMIT_HEADER + RING_ENTRY * i;
    ring.push({ idHash: view.getBigUint64(at, true), batchStart: u64(view, at + 8) });
  }
  return {
    slot: name,
    counter: view.getBigUint64(16, true),
    position: u64(view, 24),
    timestampMs: u64(view, 32),
    ring,
  };
}

// The commit: the valid slot with the higher counter (slot A on a tie); an empty stream when
// neither is valid and both are zero or absent.
export function decodeCommit(header) {
  const a = slot(header.subarray(0, SLOT_SIZE), "A");
  const b = slot(header.subarray(SLOT_SIZE, 2 * SLOT_SIZE), "B");
  if (a && b) return b.counter > a.counter ? b : a;
  if (a || b) return a || b;
  if (header.some((byte) => byte !== 0)) throw new CorruptData(0, "both commit slots are damaged");
  return { slot: null, counter: 0n, position: 0, timestampMs: 0, ring: [] };
}

export function decodeBatchHeader(bytes, at, position, end) {
  if (bytes.length - at < BATCH_HEADER || !startsWith(bytes, at, BATCH_MAGIC)) {
    throw new CorruptData(position, "no batch starts here");
  }
  const view = viewOf(bytes);
  const version = bytes[at + 8];
  if (version !== 1) throw new CorruptData(position, `unknown batch version ${version}`);
  const idLength = bytes[at + 10];
  const length = view.getUint32(at + 12, true);
  if (view.getBigUint64(at + 16, true) !== BigInt(position)) {
    throw new CorruptData(position, "the batch names another position");
  }
  if (length < BATCH_HEADER + idLength || length > MAX_BATCH) {
    throw new CorruptData(position, `impossible batch length ${length}`);
  }
  if (end !== undefined && position + length > end) {
    throw new CorruptData(position, `batch runs past the committed position ${end}`);
  }
  return {
    position,
    length,
    end: position + length,
    // Exact below 2^53 (every real time); a damaged one is caught by the checksum.
    timestampMs: Number(view.getBigUint64(at + 24, true)),
    count: view.getUint32(at + 32, true),
    batchId: String.fromCharCode(...bytes.subarray(at + BATCH_HEADER, at + BATCH_HEADER + idLength)),
    recordsAt: BATCH_HEADER + idLength,
  };
}

export function verifyBatch(bytes, at, header) {
  const stored = viewOf(bytes).getUint32(at + 4, true);
  if (crc32c(bytes.subarray(at + 8, at + header.length)) !== stored) {
    throw new CorruptData(header.position, "checksum mismatch");
  }
}

// The messages of a verified batch, in order.
export function decodeRecords(bytes, at, header) {
  const view = viewOf(bytes);
  const messages = [];
  let i = header.recordsAt;
  while (i < header.length) {
    if (i + RECORD_HEADER > header.length) throw new CorruptData(header.position, "record header runs past the batch");
    const valueLength = view.getUint32(at + i + 4, true);
    const keyLength = bytes[at + i + 8];
    const keyAt = at + i + RECORD_HEADER;
    const next = i + RECORD_HEADER + keyLength + valueLength;
    if (next > header.length) throw new CorruptData(header.position, "record runs past the batch");
    let key;
    try {
      key = utf8.decode(bytes.subarray(keyAt, keyAt + keyLength));
    } catch {
      throw new CorruptData(header.position, "key is not valid UTF-8");
    }
    messages.push({
      offset: header.position + i,
      timestampMs: header.timestampMs,
      key,
      value: bytes.slice(keyAt + keyLength, keyAt + keyLength + valueLength),
    });
    i = next;
  }
  if (messages.length !== header.count) {
    throw new CorruptData(header.position, `${messages.length} records where the header says ${header.count}`);
  }
  return messages;
}

// Reads one stream's log. Never interprets bytes at or above the committed position. `first` is
// where the stream starts (its oldest segment's base; 0 unless trimmed): nothing below it is read.
export class LogReader {
  constructor(source, first = 0) {
    this.source = source;
    this.first = first;
  }

  async commit() {
    return decodeCommit(await this.source.read(0, 2 * SLOT_SIZE));
  }

  // The verified batches from the batch start `start` up to `end`, each with its messages.
  async *batches(start, end) {
    let position = start;
    let size = FIRST_READ;
    while (position < end) {
      const want = Math.min(size, end - position);
      let bytes = await this.source.read(DATA_START + position, want);
      size = Math.min(2 * size, MAX_READ);
      let at = 0;
      while (position < end) {
        if (bytes.length - at < BATCH_HEADER) {
          if (bytes.length < want) throw new CorruptData(position, LOG_ENDS);
          break;
        }
        const header = decodeBatchHeader(bytes, at, position, end);
        if (bytes.length - at < header.length) {
          if (at > 0) break; // read again from this batch's start
          bytes = await this.source.read(DATA_START + position, header.length);
          if (bytes.length < header.length) throw new CorruptData(position, LOG_ENDS);
        }
        verifyBatch(bytes, at, header);
        yield { header, messages: decodeRecords(bytes, at, header) };
        position = header.end;
        at += header.length;
      }
    }
  }

  // The start of the batch holding `position`: 0 (where the stream starts), the end, a batch
  // start, or a record offset.
  async locate(position, end) {
    if (!Number.isInteger(position) || position < 0 || position > end) {
      throw new InvalidPosition(`position ${position} is outside the stream (0 to ${end})`);
    }
    if (position === end) return position;
    if (position === 0 || position === this.first) return this.first;
    if (position < this.first) {
      throw new InvalidPosition(`position ${position} was trimmed away: the stream starts at ${this.first} now`);
    }
    const probe = await this.source.read(DATA_START + position, 4);
    if (probe.length < 4) throw new CorruptData(position, LOG_ENDS);
    if (startsWith(probe, 0, BATCH_MAGIC)) return position;
    const back = probe.length === 4 ? viewOf(probe).getUint32(0, true) : 0;
    const start = position - back;
    const notBoundary = new InvalidPosition(`position ${position} is not a record boundary`);
    if (back < BATCH_HEADER || start < 0) throw notBoundary;
    let header;
    try {
      header = await this.headerAt(start);
    } catch (error) {
      if (error instanceof CorruptData) throw notBoundary;
      throw error;
    }
    if (!(start + header.recordsAt <= position && position < header.end)) throw notBoundary;
    return start;
  }

  // Up to `limit` messages from `position` (0, a batch start or an offset), and where to go on;
  // at damage, the messages before it and the damage (a CorruptData) instead of going on.
  async read(position, limit) {
    const commit = await this.commit();
    const start = await this.locate(position, commit.position);
    const messages = [];
    try {
      for await (const { header, messages: batch } of this.batches(start, commit.position)) {
        const from = header.position < position ? batch.findIndex((m) => m.offset === position) : 0;
        if (from < 0) throw new InvalidPosition(`position ${position} is not a record boundary`);
        for (const message of batch.slice(from)) {
          if (messages.length === limit) return { messages, next: message.offset, commit, damage: null };
          messages.push(message);
        }
      }
    } catch (error) {
      if (!(error instanceof CorruptData)) throw error;
      return { messages, next: error.position, commit, damage: error };
    }
    return { messages, next: commit.position, commit, damage: null };
  }

  // The first batch that starts in [position, limit), found by its magic and taken only when
  // its header names its own position, it ends by `end`, and its checksum and records verify.
  async nextBatch(position, limit, end, verify = true) {
    let window = PROBE;
    while (position < limit) {
      const length = Math.min(window, limit - position + BATCH_HEADER);
      const bytes = await this.source.read(DATA_START + position, length);
      for (let at = indexOf(bytes, 0); at !== -1 && position + at < limit; at = indexOf(bytes, at + 1)) {
        const header = await this.candidate(bytes, at, position + at, end, verify);
        if (header) return header;
      }
      if (bytes.length < length) return null;
      position += bytes.length - BATCH_MAGIC.length + 1;
      window = Math.min(2 * window, MAX_READ);
    }
    return null;
  }

  async candidate(bytes, at, position, end, verify) {
    try {
      const header = decodeBatchHeader(bytes, at, position, end);
      if (!verify) return header;
      let batch = bytes;
      let from = at;
      if (at + header.length > bytes.length) {
        batch = await this.source.read(DATA_START + position, header.length);
        from = 0;
      }
      verifyBatch(batch, from, header);
      decodeRecords(batch, from, header);
      return header;
    } catch (error) {
      if (error instanceof CorruptData || error instanceof RangeError) return null;
      throw error;
    }
  }

  // The offset of the first message appended at or after `whenMs`, or the end: a binary search
  // over the log, as docs/format.md's "Finding a time" describes.
  async seekTime(whenMs) {
    const commit = await this.commit();
    const end = commit.position;
    if (end === 0 || commit.timestampMs < whenMs) return end;
    const first = await this.headerAt(this.first, end);
    if (first.timestampMs >= whenMs) return first.position + (await this.whole(first)).recordsAt;
    let low = this.first;
    let high = end;
    let top = end;
    while (top - low > SEEK_SPAN) {
      const middle = Math.floor((low + top) / 2);
      const found = await this.nextBatch(middle, top, end);
      if (found === null) top = middle;
      else if (found.timestampMs < whenMs) low = found.position;
      else high = top = found.position;
    }
    for await (const header of this.headers(low, high, end)) {
      if (header.timestampMs >= whenMs) return header.position + (await this.whole(header)).recordsAt;
    }
    if (high === end) return end;
    return high + (await this.whole(await this.headerAt(high, end))).recordsAt;
  }

  // The header of the batch at `position` (its batch id perhaps cut short).
  async headerAt(position, end) {
    const head = await this.source.read(DATA_START + position, BATCH_HEADER + 128);
    if (head.length < BATCH_HEADER) throw new CorruptData(position, LOG_ENDS);
    return decodeBatchHeader(head, 0, position, end);
  }

  // The header of a batch that must be wholly in the log: a time search answers only where a
  // read can start (a log cut short is reported at the first batch not wholly in it).
  async whole(header) {
    if ((await this.source.read(DATA_START + header.end - 1, 1)).length < 1) {
      throw new CorruptData(header.position, LOG_ENDS);
    }
    return header;
  }

  // The headers of the batches from the batch start `position` to `stop`, read a window at a
  // time (each batch's length leads to the next), as vault_core's time search walks them.
  async *headers(position, stop, end) {
    let buffer = new Uint8Array(0);
    let base = position;
    let previous = null;
    while (position < stop) {
      let at = position - base;
      if (at + BATCH_HEADER > buffer.length) {
        base = position;
        at = 0;
        buffer = await this.source.read(DATA_START + position, Math.min(SEEK_SPAN, stop - position) + 64);
        if (buffer.length < Math.min(BATCH_HEADER, end - position)) {
          // The log ends in this header, unless none of it is there and the batch before it
          // already lacks its last byte.
          const gone = previous && !buffer.length && !(await this.source.read(DATA_START + position - 1, 1)).length;
          throw new CorruptData(gone ? previous.position : position, LOG_ENDS);
        }
      }
      const header = decodeBatchHeader(buffer, at, position, end);
      yield header;
      previous = header;
      position = header.end;
    }
  }

  // (time, position) points of the stream's growth: the start of the batches found near
  // `samples` evenly spaced positions, and the commit. For a chart: headers only, unverified.
  async growth(samples = 24) {
    const commit = await this.commit();
    const points = [];
    const step = (commit.position - this.first) / samples;
    for (let i = 0; i < samples && commit.position > 0; i++) {
      const [from, to] = [i, i + 1].map((n) => this.first + Math.floor(n * step));
      const found = await this.nextBatch(from, to, commit.position, false);
      if (found) points.push([found.timestampMs, found.position]);
    }
    if (commit.position > 0) points.push([commit.timestampMs, commit.position]);
    return { commit, points };
  }
}

function indexOf(bytes, from) {
  for (let at = from; at + BATCH_MAGIC.length <= bytes.length; at++) {
    if (bytes[at] === 0x4d && startsWith(bytes, at, BATCH_MAGIC)) return at;
  }
  return -1;
}

// A log read over HTTP with Range requests: a SAS read URL on Azure, or vault serve's /log route.
export function httpSource(url, headers = {}) {
  return {
    async read(start, length) {
      if (length <= 0) return new Uint8Array(0);
      const response = await fetch(url, { headers: { ...headers, Range: `bytes=${start}-${start + length - 1}` } });
      if (response.status === 404 || response.status === 416) return new Uint8Array(0);
      if (!response.ok) throw new Error(`reading the log answered ${response.status} ${response.statusText}`);
      const bytes = new Uint8Array(await response.arrayBuffer());
      return response.status === 206 ? bytes.subarray(0, length) : bytes.subarray(start, start + length);
    },
    async size() {
      const response = await fetch(url, { method: "HEAD", headers });
      return response.ok ? Number(response.headers.get("content-length") || 0) : 0;
    },
  };
}
