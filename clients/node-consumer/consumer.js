#!/usr/bin/env node
// Reads the offload `jobs` and `outcomes` topics as any non-Python consumer would: CloudEvents 1.0 in Kafka
// binary mode (attributes in ce_* headers, the event's JSON as the value), every record validated against the
// committed JSON Schema files (schemas/json/), and prints one JSON summary per job to stdout.
//
//   node consumer.js --brokers 127.0.0.1:19092 [--prefix offload.] [--schemas ../../schemas/json] [--job ID]
//
// It reads each partition from its first offset up to the end it had when the consumer started, then stops.
// Exit status: 0 when every record was valid and counted; 1 when any was not valid, or was a version of a
// counted type that summary.js does not know (each one is reported on stderr); 2 on a usage or connection error.
'use strict';

const path = require('node:path');
const crypto = require('node:crypto');
const { parseArgs } = require('node:util');
const { Kafka, logLevel } = require('kafkajs');
const { isDateTime, loadValidators } = require('./schemas');
const { JobSummaries, unreadVersion } = require('./summary');
const { registerLz4 } = require('./lz4');

registerLz4(); // gzip is built into kafkajs; zstd and snappy are not read by this consumer

const REQUIRED_ATTRIBUTES = ['ce_specversion', 'ce_id', 'ce_source', 'ce_type'];

function options(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      brokers: { type: 'string', default: process.env.KAFKA_BOOTSTRAP_SERVERS || '127.0.0.1:19092' },
      prefix: { type: 'string', default: process.env.OFFLOAD_TOPIC_PREFIX || 'offload.' },
      schemas: { type: 'string', default: path.join(__dirname, '..', '..', 'schemas', 'json') },
      job: { type: 'string' },
      'timeout-ms': { type: 'string', default: '120000' },
    },
  });
  return { ...values, timeoutMs: Number(values['timeout-ms']) };
}

// CloudEvents binary mode: every ce_* header is an attribute; the value is the data (application/json).
function cloudEventOf(message) {
  const attributes = {};
  for (const [name, value] of Object.entries(message.headers || {})) {
    const text = Buffer.isBuffer(value) ? value.toString('utf8') : String(value);
    if (name.startsWith('ce_')) attributes[name] = text;
    else if (name === 'content-type') attributes.datacontenttype = text;
  }
  const missing = REQUIRED_ATTRIBUTES.filter((name) => !attributes[name]);
  if (missing.length) return { error: `missing CloudEvents header(s) ${missing.join(', ')}` };
  if (attributes.ce_specversion !== '1.0') return { error: `unsupported ce_specversion ${attributes.ce_specversion}` };
  if (attributes.datacontenttype && attributes.datacontenttype !== 'application/json') {
    return { error: `unexpected content-type ${attributes.datacontenttype}` };
  }
  if (message.value === null) return { error: 'record has no value' };
  let data;
  try {
    data = JSON.parse(message.value.toString('utf8'));
  } catch (err) {
    return { error: `value is not JSON: ${err.message}` };
  }
  return { attributes, data };
}

async function endOffsets(admin, topics) {
  const ends = new Map(); // "topic/partition" -> offset one past the last record at start
  for (const topic of topics) {
    for (const { partition, high, low } of await admin.fetchTopicOffsets(topic)) {
      if (Number(high) > Number(low)) ends.set(`${topic}/${partition}`, Number(high));
    }
  }
  return ends;
}

async function main() {
  const opts = options(process.argv.slice(2));
  const validators = loadValidators(opts.schemas);
  const topics = { jobs: `${opts.prefix}jobs`, outcomes: `${opts.prefix}outcomes` };
  const shortOf = Object.fromEntries(Object.entries(topics).map(([short, full]) => [full, short]));
  const kafka = new Kafka({
    clientId: 'offload-node-consumer',
    brokers: opts.brokers.split(','),
    logLevel: logLevel.WARN,
    retry: { retries: 8 },
  });
  const admin = kafka.admin();
  await admin.connect();
  const remaining = await endOffsets(admin, Object.values(topics));
  // A throwaway group: this consumer reads everything each time and commits nothing.
  const groupId = `offload-node-consumer-${crypto.randomUUID()}`;
  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 1000 });
  const summaries = new JobSummaries();
  const stats = { records: 0, valid: 0, invalid: 0, unknown_types: 0, unread_versions: 0, by_type: {} };

  const finished = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not at the end of the topics after ${opts.timeoutMs} ms`)),
      opts.timeoutMs);
    const check = () => {
      if (remaining.size === 0) {
        clearTimeout(timer);
        resolve();
      }
    };
    check();
    consumer.connect()
      .then(() => consumer.subscribe({ topics: Object.values(topics), fromBeginning: true }))
      .then(() => consumer.run({
        autoCommit: false,
        eachMessage: async ({ topic, partition, message }) => {
          const key = `${topic}/${partition}`;
          const offset = Number(message.offset);
          const end = remaining.get(key);
          if (end === undefined || offset >= end) return; // written after we started: not ours to count
          handle(shortOf[topic], partition, message);
          if (offset + 1 >= end) remaining.delete(key);
          check();
        },
      }))
      .catch(reject);
  });

  function handle(shortTopic, partition, message) {
    stats.records += 1;
    const where = `${shortTopic}/${partition}@${message.offset}`;
    const event = cloudEventOf(message);
    if (event.error) {
      stats.invalid += 1;
      process.stderr.write(`invalid ${where}: ${event.error}\n`);
      return;
    }
    const type = event.attributes.ce_type;
    const unread = unreadVersion(type.replace(/^org\.manireports\.offload\./, ''));
    if (unread) {
      stats.unread_versions += 1; // counting around it would print wrong totals as if they were right
      process.stderr.write(`unread ${where} (${type}): ${unread}\n`);
      return;
    }
    const validator = validators.get(type);
    if (!validator) {
      stats.unknown_types += 1; // a newer producer's type: readers skip what they do not know
      return;
    }
    const problems = [];
    if (!validator.validate(event.data)) {
      problems.push(...validator.validate.errors.map((e) => `${e.instancePath || '(root)'} ${e.message}`));
    }
    if (validator.topic !== shortTopic) problems.push(`type ${type} belongs on ${validator.topic}`);
    if (event.attributes.ce_subject && event.data.job_id && event.attributes.ce_subject !== event.data.job_id) {
      problems.push(`ce_subject ${event.attributes.ce_subject} is not the job id ${event.data.job_id}`);
    }
    // Keyed by job id, so a job's events keep their order (one partition); another key breaks that promise.
    const key = message.key === null ? null : message.key.toString('utf8');
    if (typeof event.data.job_id === 'string' && key !== event.data.job_id) {
      problems.push(`record key ${JSON.stringify(key)} is not the job id ${event.data.job_id}`);
    }
    if (event.attributes.ce_time !== undefined && !isDateTime(event.attributes.ce_time)) {
      problems.push(`ce_time ${JSON.stringify(event.attributes.ce_time)} is not an RFC 3339 timestamp`);
    }
    if (problems.length) {
      stats.invalid += 1;
      process.stderr.write(`invalid ${where} (${type}): ${problems.join('; ')}\n`);
      return;
    }
    stats.valid += 1;
    const short = type.replace(/^org\.manireports\.offload\./, '');
    stats.by_type[short] = (stats.by_type[short] || 0) + 1;
    if (!opts.job || event.data.job_id === opts.job) summaries.apply(short, event.data);
  }

  try {
    await finished;
  } finally {
    await consumer.disconnect();
    await admin.deleteGroups([groupId]).catch(() => {}); // nothing committed; best effort tidy-up
    await admin.disconnect();
  }
  const out = { topics, ...stats, jobs: summaries.all() };
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  return stats.invalid === 0 && stats.unread_versions === 0 ? 0 : 1;
}

if (require.main === module) {
  main().then((code) => process.exit(code), (err) => {
    process.stderr.write(`offload-node-consumer: ${err.stack || err}\n`);
    process.exit(2);
  });
}

module.exports = { cloudEventOf, options };
