// The scribe client both examples share: stubs built at run time from scribe's .proto files, and the
// retry policy of scribe's Python client.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');

function client(args) {
  const definition = protoLoader.loadSync('transcription/v1/transcription.proto', {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const { transcription } = grpc.loadPackageDefinition(definition);
  const credentials = args.tlsCa
    ? grpc.credentials.createSsl(fs.readFileSync(args.tlsCa))
    : grpc.credentials.createInsecure();
  // The same retry policy as scribe's Python client: gRPC retries UNAVAILABLE with backoff.
  const serviceConfig = {
    methodConfig: [{
      name: [{ service: 'transcription.v1.TranscriptionService' }],
      retryPolicy: {
        maxAttempts: 5, initialBackoff: '0.5s', maxBackoff: '5s', backoffMultiplier: 2,
        retryableStatusCodes: ['UNAVAILABLE'],
      },
    }],
  };
  return new transcription.v1.TranscriptionService(args.address, credentials, {
    'grpc.service_config': JSON.stringify(serviceConfig),
    // Final results of long recordings can pass grpc-js's 4 MiB default.
    'grpc.max_receive_message_length': -1,
  });
}

function seconds(duration) {
  return duration ? Number(duration.seconds) + duration.nanos / 1e9 : 0;
}

module.exports = { client, seconds };
