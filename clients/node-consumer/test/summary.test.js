'use strict';
// The summary's counting rules alone, without a broker (node --test): the integration test
// (tests/integration/test_node_consumer.py) compares the whole summary with the read model.

const test = require('node:test');
const assert = require('node:assert/strict');
const { JobSummaries, unreadVersion } = require('../summary');

const outcome = (type, userid, run) => [type, { job_id: 'j1', userid, run, batch_no: 0 }];

test("a learner's outcome is the one of their latest run, whatever order the records come in", () => {
  const summaries = new JobSummaries();
  summaries.apply('job.accepted.v1', { job_id: 'j1', type: 'email', batch_count: 1, total_recipients: 2 });
  summaries.apply('batches.dispatched.v1', { job_id: 'j1', run: 1, locations: [[0, 0]] }); // the retry run
  for (const [type, data] of [
    outcome('recipient.failed.v1', 1, 0), outcome('recipient.sent.v1', 1, 1), // retried and sent
    outcome('recipient.sent.v1', 2, 1), outcome('recipient.failed.v1', 2, 0), // run 0's failure read late
    outcome('recipient.suppressed.v1', 3, 0), // on the suppression list: neither succeeded nor failed
  ]) summaries.apply(type, data);
  const [job] = summaries.all();
  assert.deepEqual([job.succeeded, job.failed, job.suppressed, job.runs, job.batch_count, job.status],
    [2, 0, 1, 2, 2, 'running']);
});

test("of a provider's reports about a learner the most severe stands", () => {
  const summaries = new JobSummaries();
  for (const type of ['recipient.complained.v1', 'recipient.delivered.v1', 'recipient.bounced.v1']) {
    summaries.apply(type, { job_id: 'j1', userid: 1 });
  }
  summaries.apply('recipient.delivered.v1', { job_id: 'j1', userid: 2 });
  const [job] = summaries.all();
  assert.deepEqual([job.delivered, job.bounced, job.complained], [1, 0, 1]);
});

test('a job waiting for its budget is waiting, then accepted; cancelled while it waits, cancelled', () => {
  const summaries = new JobSummaries();
  const wait = { type: 'email', company_id: 11, provider: 'sendgrid', template_id: 't', total_recipients: 20 };
  summaries.apply('job.waiting-for-budget.v1', { job_id: 'waits', ...wait });
  summaries.apply('job.waiting-for-budget.v1', { job_id: 'gone', ...wait });
  summaries.apply('job.completed.v1', { job_id: 'gone', run: 0, cancelled: true });
  const [gone, waits] = summaries.all();
  assert.deepEqual([waits.status, waits.provider, waits.route, waits.total_recipients], ['waiting', 'sendgrid', null, 20]);
  assert.deepEqual([gone.status, gone.company_id, gone.batch_count], ['cancelled', 11, 0]);
  summaries.apply('job.accepted.v1', { job_id: 'waits', ...wait, route: 'cloud', batch_count: 1 });
  assert.equal(summaries.all()[1].status, 'accepted');
});

test('a version of a counted type the summary does not know is named; other types are not its business', () => {
  assert.match(unreadVersion('recipient.sent.v2'), /counts recipient\.sent\.v1, not recipient\.sent\.v2/);
  assert.equal(unreadVersion('recipient.sent.v1'), null);
  assert.equal(unreadVersion('callback.failed.v7'), null);
  assert.equal(unreadVersion('job.paused.v1'), null);
});
