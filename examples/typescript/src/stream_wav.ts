#!/usr/bin/env node
// Streams a WAV file to scribe's StreamingTranscribe and prints interim and final results.
//
// The typed path for a TypeScript service: `buf generate` turns scribe's .proto files into TypeScript
// messages and a service descriptor (@bufbuild/protoc-gen-es), and Connect's gRPC transport
// (@connectrpc/connect-node, HTTP/2) calls the gateway with them. A renamed field or a wrong type is a
// compile error here, not a runtime surprise.
//
//   node dist/stream_wav.js FILE.wav [--address HOST:PORT] [--speed N] [--speakers] [--token T] [--tls-ca CA.pem]
//
// --speed 1 (the default) sends the audio in real time, like a microphone; 0 sends it at once.
// --speakers asks for speaker labels (diarizationConfig): each final is printed after its speaker.
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

import { create } from "@bufbuild/protobuf";
import type { Duration } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  AudioEncoding,
  type StreamingTranscribeRequest,
  StreamingTranscribeRequestSchema,
  TranscriptionService,
} from "./gen/transcription/v1/transcription_pb.js";

const CHUNK_SECONDS = 0.1;
const USAGE =
  "usage: stream_wav.js FILE.wav [--address HOST:PORT] [--speed N] [--speakers] [--token T] [--tls-ca CA.pem]";

interface Args {
  file: string;
  address: string;
  speed: number;
  speakers: boolean;
  token?: string;
  tlsCa?: string;
}

interface Wav {
  channels: number;
  sampleRate: number;
  pcm: Buffer;
}

class UsageError extends Error {}

function parseArgs(argv: string[]): Args {
  let file: string | undefined;
  const args: Omit<Args, "file"> = {
    address: process.env.GATEWAY_ADDRESS ?? "127.0.0.1:50051",
    speed: 1,
    speakers: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = (): string => {
      const next = argv[++i];
      if (next === undefined) throw new UsageError(`${arg} needs a value\n${USAGE}`);
      return next;
    };
    if (arg === "--address") args.address = value();
    else if (arg === "--speed") args.speed = Number(value());
    else if (arg === "--speakers") args.speakers = true;
    else if (arg === "--token") args.token = value();
    else if (arg === "--tls-ca") args.tlsCa = value();
    else if (file === undefined) file = arg;
    else throw new UsageError(`unexpected argument ${arg}\n${USAGE}`);
  }
  if (file === undefined || !(args.speed >= 0)) throw new UsageError(USAGE);
  return { file, ...args };
}

// A RIFF/WAVE file is a list of chunks: "fmt " says how the samples are stored, "data" holds them.
function readWav(file: string): Wav {
  const buf = readFileSync(file);
  if (buf.toString("ascii", 0, 4) !== "RIFF" || buf.toString("ascii", 8, 12) !== "WAVE") {
    throw new Error(`${file} is not a RIFF/WAVE file`);
  }
  let format: { encoding: number; channels: number; sampleRate: number; bitsPerSample: number } | undefined;
  let offset = 12;
  while (offset + 8 <= buf.length) {
    const id = buf.toString("ascii", offset, offset + 4);
    const size = buf.readUInt32LE(offset + 4);
    const body = offset + 8;
    if (id === "fmt ") {
      format = {
        encoding: buf.readUInt16LE(body),
        channels: buf.readUInt16LE(body + 2),
        sampleRate: buf.readUInt32LE(body + 4),
        bitsPerSample: buf.readUInt16LE(body + 14),
      };
    } else if (id === "data") {
      if (!format) throw new Error(`${file}: "data" comes before "fmt "`);
      // 1 is integer PCM; 0xFFFE (WAVE_FORMAT_EXTENSIBLE) also carries plain PCM in practice.
      if (![1, 0xfffe].includes(format.encoding) || format.bitsPerSample !== 16) {
        throw new Error(`${file}: only 16-bit PCM WAV can be streamed as LINEAR16`);
      }
      const { channels, sampleRate } = format;
      return { channels, sampleRate, pcm: buf.subarray(body, Math.min(body + size, buf.length)) };
    }
    offset = body + size + (size % 2); // chunks are padded to an even length
  }
  throw new Error(`${file} has no "data" chunk`);
}

// The config first, then LINEAR16 chunks of CHUNK_SECONDS, paced at `speed` times real time.
async function* requests(wav: Wav, speed: number, speakers: boolean): AsyncGenerator<StreamingTranscribeRequest> {
  yield create(StreamingTranscribeRequestSchema, {
    streamingRequest: {
      case: "streamingConfig",
      value: {
        encoding: AudioEncoding.LINEAR16,
        sampleRateHertz: wav.sampleRate,
        audioChannelCount: wav.channels,
        interimResults: true,
        // Present turns speaker labels on; empty lets the audio decide how many speakers there are.
        diarizationConfig: speakers ? {} : undefined,
      },
    },
  });
  const bytesPerSecond = wav.sampleRate * wav.channels * 2;
  const step = Math.round(CHUNK_SECONDS * wav.sampleRate) * wav.channels * 2;
  const started = Date.now();
  for (let at = 0; at < wav.pcm.length; at += step) {
    if (speed > 0) {
      const due = started + (at / bytesPerSecond / speed) * 1000;
      if (due > Date.now()) await sleep(due - Date.now());
    }
    const chunk = wav.pcm.subarray(at, at + step);
    yield create(StreamingTranscribeRequestSchema, { streamingRequest: { case: "audioContent", value: chunk } });
  }
}

function seconds(duration: Duration | undefined): number {
  return duration ? Number(duration.seconds) + duration.nanos / 1e9 : 0;
}

function client(args: Args) {
  const bearer: Interceptor = (next) => async (request) => {
    if (args.token) request.header.set("authorization", `Bearer ${args.token}`);
    return next(request);
  };
  const transport = createGrpcTransport({
    baseUrl: `${args.tlsCa ? "https" : "http"}://${args.address}`,
    nodeOptions: args.tlsCa ? { ca: readFileSync(args.tlsCa) } : {},
    interceptors: [bearer],
  });
  return createClient(TranscriptionService, transport);
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const wav = readWav(args.file);
  for await (const response of client(args).streamingTranscribe(requests(wav, args.speed, args.speakers))) {
    for (const result of response.results) {
      const text = result.alternatives[0]?.transcript ?? "";
      const end = seconds(result.resultEndOffset).toFixed(2);
      // A known speaker's label is its name; other voices are numbered "1", "2", ... as they are first heard.
      const label = result.speakerLabel;
      const who = label === "" ? "" : /^\d+$/.test(label) ? `Speaker ${label}: ` : `${label}: `;
      if (result.isFinal) console.log(`final   [${end} s] ${who}${text}`);
      else console.log(`interim [${end} s] ${text} (stability ${result.stability.toFixed(2)})`);
    }
  }
  console.error("stream ended");
}

main().catch((err: unknown) => {
  if (err instanceof ConnectError) {
    console.error(`error: ${Code[err.code]}: ${err.rawMessage}`);
    process.exitCode = 1;
  } else {
    console.error(`error: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = err instanceof UsageError || !(err instanceof Error) ? 2 : 1;
  }
});
