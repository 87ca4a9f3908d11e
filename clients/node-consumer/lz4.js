'use strict';
// Kafka's LZ4 codec for kafkajs, which has none built in: this service's producers compress with lz4 by
// default (OFFLOAD_KAFKA_COMPRESSION). Kafka uses the standard LZ4 frame format (KIP-57); lz4-napi reads and
// writes it (prebuilt binaries, no compiler needed). lz4js, the pure-JavaScript option, was tried first and
// decoded a 200 KB frame written by the Python producer wrongly (144,075 of 204,780 bytes), so it is not used.

const { compressFrameSync, decompressFrameSync } = require('lz4-napi');
const { CompressionTypes, CompressionCodecs } = require('kafkajs');

function registerLz4() {
  CompressionCodecs[CompressionTypes.LZ4] = () => ({
    async compress(encoder) {
      return compressFrameSync(encoder.buffer);
    },
    async decompress(buffer) {
      return decompressFrameSync(buffer);
    },
  });
}

module.exports = { registerLz4 };
