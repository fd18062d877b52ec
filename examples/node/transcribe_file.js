#!/usr/bin/env node
// Transcribes an audio file of any size with progress, and prints the transcript.
//
// A file that fits in one message (the server's limit comes from GetConfig) goes in one
// TranscribeWithProgress call; a larger one is read from disk in chunks and sent through
// TranscribeUpload, so neither this process nor the gateway holds the whole file. Both answer with the
// same progress reports, split over every serving worker for a long recording.
//
//   node transcribe_file.js FILE [--address HOST:PORT] [--token T] [--tls-ca CA.pem] [--language en]
//
// Progress goes to stderr, the transcript to stdout.
'use strict';

const fs = require('node:fs');
const grpc = require('@grpc/grpc-js');
const { client, seconds } = require('./scribe_client');

// Room in a message for everything but the audio, and the largest chunk of an upload.
const MESSAGE_MARGIN_BYTES = 64 * 1024;
const CHUNK_BYTES = 1024 * 1024;

function parseArgs(argv) {
  const args = { file: null, address: process.env.GATEWAY_ADDRESS || '127.0.0.1:50051', token: null, tlsCa: null, language: '' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--address') args.address = argv[++i];
    else if (arg === '--token') args.token = argv[++i];
    else if (arg === '--tls-ca') args.tlsCa = argv[++i];
    else if (arg === '--language') args.language = argv[++i];
    else if (!args.file) args.file = arg;
    else throw new Error(`unexpected argument ${arg}`);
  }
  if (!args.file) {
    throw new Error('usage: node transcribe_file.js FILE [--address HOST:PORT] [--token T] [--tls-ca CA.pem] [--language en]');
  }
  return args;
}

function maxMessageBytes(stub, metadata) {
  return new Promise((resolve, reject) => {
    stub.GetConfig({}, metadata, { deadline: Date.now() + 10_000 }, (err, config) => {
      if (err) reject(err);
      else resolve(Number(config.limits.max_message_bytes) || 64 * 1024 * 1024);
    });
  });
}

// Writes the config, then the file a chunk at a time, waiting whenever gRPC's buffer is full.
async function upload(call, file, options, chunkBytes) {
  call.write({ upload_config: { options } });
  const stream = fs.createReadStream(file, { highWaterMark: chunkBytes });
  for await (const chunk of stream) {
    if (!call.write({ audio_content: chunk })) {
      await new Promise((resolve) => call.once('drain', resolve));
    }
  }
  call.end();
}

function report(progress) {
  const done = seconds(progress.processed_audio).toFixed(0);
  const total = seconds(progress.audio_duration).toFixed(0);
  process.stderr.write(`${progress.progress_percent.toFixed(1).padStart(5)}% ${done}/${total} s of audio\n`);
  if (progress.result) {
    const result = progress.result;
    console.log(result.transcript);
    console.error(`${result.worker_id}: ${seconds(result.audio_duration).toFixed(1)} s of audio in ${seconds(result.processing_time).toFixed(2)} s`);
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const size = fs.statSync(args.file).size;
  const stub = client(args);
  const metadata = new grpc.Metadata();
  if (args.token) metadata.set('authorization', `Bearer ${args.token}`);
  const options = { language_code: args.language };
  const limit = await maxMessageBytes(stub, metadata);
  let call;
  if (size <= limit - MESSAGE_MARGIN_BYTES) {
    console.error(`sending ${size} bytes with TranscribeWithProgress`);
    const request = { request: { audio_content: fs.readFileSync(args.file), options } };
    call = stub.TranscribeWithProgress(request, metadata);
    call.on('data', report);
  } else {
    const chunkBytes = Math.max(4096, Math.min(CHUNK_BYTES, Math.floor((limit - MESSAGE_MARGIN_BYTES) / 2)));
    console.error(`uploading ${size} bytes with TranscribeUpload (one message holds at most ${limit})`);
    call = stub.TranscribeUpload(metadata);
    call.on('data', (response) => report(response.progress));
    upload(call, args.file, options, chunkBytes).catch((err) => {
      console.error(`error: ${err.message}`);
      call.cancel();
      process.exitCode = 1;
    });
  }
  await new Promise((resolve) => {
    call.on('error', (err) => {
      console.error(`error: ${grpc.status[err.code]}: ${err.details}`);
      process.exitCode = 1;
      resolve();
    });
    call.on('end', resolve);
  });
}

main().catch((err) => {
  console.error(`error: ${err.details || err.message}`);
  process.exitCode = 2;
});
