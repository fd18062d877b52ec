#!/usr/bin/env node
// Streams a WAV file to scribe's StreamingTranscribe and prints interim and final results.
//
// This is the path another service takes: @grpc/grpc-js with stubs that @grpc/proto-loader builds at
// run time from scribe's own .proto files (no generated code to keep in sync). Well-known types such
// as google/protobuf/duration.proto come bundled with protobufjs, so only ../../protos is included.
//
//   node stream_wav.js FILE.wav [--address HOST:PORT] [--speed N] [--token T] [--tls-ca CA.pem]
//
// --speed 1 (the default) sends the audio in real time, like a microphone; 0 sends it at once.
'use strict';

const fs = require('node:fs');
const grpc = require('@grpc/grpc-js');
const { client, seconds } = require('./scribe_client');

const CHUNK_SECONDS = 0.1;

function parseArgs(argv) {
  const args = { file: null, address: process.env.GATEWAY_ADDRESS || '127.0.0.1:50051', speed: 1, token: null, tlsCa: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--address') args.address = argv[++i];
    else if (arg === '--speed') args.speed = Number(argv[++i]);
    else if (arg === '--token') args.token = argv[++i];
    else if (arg === '--tls-ca') args.tlsCa = argv[++i];
    else if (!args.file) args.file = arg;
    else throw new Error(`unexpected argument ${arg}`);
  }
  if (!args.file || !(args.speed >= 0)) {
    throw new Error('usage: node stream_wav.js FILE.wav [--address HOST:PORT] [--speed N] [--token T] [--tls-ca CA.pem]');
  }
  return args;
}

// A RIFF/WAVE file is a list of chunks: "fmt " says how the samples are stored, "data" holds them.
function readWav(file) {
  const buf = fs.readFileSync(file);
  if (buf.toString('ascii', 0, 4) !== 'RIFF' || buf.toString('ascii', 8, 12) !== 'WAVE') {
    throw new Error(`${file} is not a RIFF/WAVE file`);
  }
  let format = null;
  let offset = 12;
  while (offset + 8 <= buf.length) {
    const id = buf.toString('ascii', offset, offset + 4);
    const size = buf.readUInt32LE(offset + 4);
    const body = offset + 8;
    if (id === 'fmt ') {
      format = {
        encoding: buf.readUInt16LE(body),
        channels: buf.readUInt16LE(body + 2),
        sampleRate: buf.readUInt32LE(body + 4),
        bitsPerSample: buf.readUInt16LE(body + 14),
      };
    } else if (id === 'data') {
      if (!format) throw new Error(`${file}: "data" comes before "fmt "`);
      // 1 is integer PCM; 0xFFFE (WAVE_FORMAT_EXTENSIBLE) also carries plain PCM in practice.
      if (![1, 0xfffe].includes(format.encoding) || format.bitsPerSample !== 16) {
        throw new Error(`${file}: only 16-bit PCM WAV can be streamed as LINEAR16`);
      }
      return { ...format, pcm: buf.subarray(body, Math.min(body + size, buf.length)) };
    }
    offset = body + size + (size % 2); // chunks are padded to an even length
  }
  throw new Error(`${file} has no "data" chunk`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function sendAudio(call, wav, speed) {
  call.write({
    streaming_config: {
      encoding: 'AUDIO_ENCODING_LINEAR16',
      sample_rate_hertz: wav.sampleRate,
      audio_channel_count: wav.channels,
      interim_results: true,
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
    // write() returns false when the stream buffers; wait for it to drain instead of piling up.
    if (!call.write({ audio_content: wav.pcm.subarray(at, at + step) })) {
      await new Promise((resolve) => call.once('drain', resolve));
    }
  }
  call.end();
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const wav = readWav(args.file);
  const metadata = new grpc.Metadata();
  if (args.token) metadata.set('authorization', `Bearer ${args.token}`);
  const call = client(args).StreamingTranscribe(metadata);
  call.on('data', (response) => {
    for (const result of response.results) {
      const text = result.alternatives.length ? result.alternatives[0].transcript : '';
      const end = seconds(result.result_end_offset).toFixed(2);
      if (result.is_final) console.log(`final   [${end} s] ${text}`);
      else console.log(`interim [${end} s] ${text} (stability ${result.stability.toFixed(2)})`);
    }
  });
  call.on('error', (err) => {
    console.error(`error: ${grpc.status[err.code]}: ${err.details}`);
    process.exitCode = 1;
  });
  call.on('end', () => console.error('stream ended'));
  sendAudio(call, wav, args.speed).catch((err) => {
    console.error(`error: ${err.message}`);
    call.cancel();
    process.exitCode = 1;
  });
}

try {
  main();
} catch (err) {
  console.error(`error: ${err.message}`);
  process.exitCode = 2;
}
