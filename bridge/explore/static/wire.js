// StepX wire format v1 in the browser (docs/PROTOCOL.md; the Python side is bridge/transport/wire.py).
// decodeWire(ArrayBuffer) -> {kind, header, arrays: {name: {shape, data: Float32Array | Uint8Array}}}
// Float arrays come back as Float32Array whatever the encoding (float32, float16, unorm8).
"use strict";

const STPX_MAGIC = "STPX";
const STPX_VERSION = 1;

class WireError extends Error {}

function align8(n) { return (n + 7) & ~7; }

function halfToFloat(h) {
  const s = (h & 0x8000) ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * Math.pow(2, -14) * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * Math.pow(2, e - 15) * (1 + f / 1024);
}

function decodeWire(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  let end = bytes.subarray(0, 256).indexOf(0);
  if (end < 0) throw new WireError("no topic terminator: not a StepX message");
  const topic = new TextDecoder("ascii").decode(bytes.subarray(0, end));
  const pre = align8(end + 1);
  if (bytes.length < pre + 16) throw new WireError("truncated preamble");
  const magic = new TextDecoder("ascii").decode(bytes.subarray(pre, pre + 4));
  if (magic !== STPX_MAGIC) throw new WireError("bad magic " + magic);
  const version = view.getUint16(pre + 4, true);
  if (version !== STPX_VERSION) throw new WireError("wire version " + version + " not supported");
  const hlen = view.getUint32(pre + 8, true);
  const dlen = view.getUint32(pre + 12, true);
  const hAt = pre + 16;
  const dataAt = align8(hAt + hlen);
  if (bytes.length < dataAt + dlen) throw new WireError("truncated message");
  const head = JSON.parse(new TextDecoder("utf-8").decode(bytes.subarray(hAt, hAt + hlen)));
  const arrays = {};
  for (const spec of head.arrays || []) {
    const count = spec.shape.reduce((a, b) => a * b, 1);
    const at = dataAt + spec.offset;
    let data;
    if (spec.dtype === "<f4") {
      data = new Float32Array(buffer.slice(at, at + 4 * count));
    } else if (spec.dtype === "<f2") {
      const raw = new Uint16Array(buffer.slice(at, at + 2 * count));
      data = new Float32Array(count);
      for (let i = 0; i < count; i++) data[i] = halfToFloat(raw[i]);
    } else if (spec.dtype === "|u1" && spec.quantized === "unorm8") {
      const raw = bytes.subarray(at, at + count);
      const scale = spec.scale || 1 / 255;
      data = new Float32Array(count);
      for (let i = 0; i < count; i++) data[i] = raw[i] * scale;
    } else if (spec.dtype === "|u1") {
      data = bytes.slice(at, at + count);
    } else {
      continue;  // dtypes the page never draws (timeline series of other types) are skipped
    }
    arrays[spec.name] = { shape: spec.shape, data };
  }
  return { kind: head.kind, topic, header: head.header || {}, arrays };
}
