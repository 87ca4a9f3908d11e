'use strict';
// Per-job summary from the jobs and outcomes topics, counted the way the service's read model counts:
// a learner's outcome is the one of their latest run (a retry run replaces a failure), and of the provider's
// reports about a learner the most severe stands (complained > bounced > delivered).

const SEVERITY = { delivered: 1, bounced: 2, complained: 3 };
// Each learner of a run has exactly one of these; a suppressed learner was not sent (on the company's
// suppression list) and counts neither as succeeded nor as failed.
const OUTCOME_STATUS = {
  'recipient.sent.v1': 'sent', 'recipient.failed.v1': 'failed', 'certificate.issued.v1': 'issued',
  'recipient.suppressed.v1': 'suppressed',
};
const REPORT_KIND = { 'recipient.delivered.v1': 'delivered', 'recipient.bounced.v1': 'bounced', 'recipient.complained.v1': 'complained' };

const nameOf = (type) => type.replace(/\.v\d+$/, '');

// Every type the summary counts, by name without its version. A record of another version of one of these
// (a newer producer's v2, or an old v1 once the summary moved on) is refused, not skipped: skipping it would
// print wrong counts as if they were right.
const COUNTED_VERSIONS = [
  'job.accepted.v1', 'job.rejected.v1', 'job.waiting-for-budget.v1', 'batches.dispatched.v1', 'batch.completed.v1',
  'job.completed.v1',
  ...Object.keys(OUTCOME_STATUS), ...Object.keys(REPORT_KIND),
];
const COUNTED_NAMES = new Set(COUNTED_VERSIONS.map((type) => nameOf(type)));

// Why the summary cannot count a type it counts another version of; null when it can count it or ignores it.
function unreadVersion(type) {
  if (COUNTED_VERSIONS.includes(type) || !COUNTED_NAMES.has(nameOf(type))) return null;
  const known = COUNTED_VERSIONS.filter((t) => nameOf(t) === nameOf(type));
  return `the summary counts ${known.join(', ')}, not ${type}: teach summary.js that version`;
}

class JobState {
  constructor(jobId) {
    this.jobId = jobId;
    this.accepted = null;
    this.waiting = null; // waits for its company's monthly budget: no route and no batch yet
    this.rejected = null;
    this.runs = new Map(); // run -> { batchCount, completed, cancelled }
    this.batchesDone = new Set(); // "run:batch"
    this.learners = new Map(); // userid -> { run, status }
    this.reports = new Map(); // userid -> kind
  }

  run(number) {
    if (!this.runs.has(number)) this.runs.set(number, { batchCount: null, completed: false, cancelled: false });
    return this.runs.get(number);
  }

  summary() {
    const runNumbers = [...this.runs.keys()].sort((a, b) => a - b);
    const last = runNumbers.length ? this.runs.get(runNumbers[runNumbers.length - 1]) : null;
    const batchCount = runNumbers.reduce((sum, n) => sum + (this.runs.get(n).batchCount || 0), 0);
    const count = (map, wanted) => [...map.values()].filter((v) => wanted.includes(v.status ?? v)).length;
    let status;
    if (this.rejected) status = 'rejected';
    else if (last && last.completed) status = last.cancelled ? 'cancelled' : 'completed';
    else if (runNumbers.length > 1 || this.learners.size > 0) status = 'running';
    else if (!this.accepted && this.waiting) status = 'waiting';
    else status = 'accepted';
    const a = this.accepted || this.waiting || {}; // the wait names the job's type, company, provider, size
    return {
      job_id: this.jobId,
      status,
      type: a.type ?? null,
      company_id: a.company_id ?? (this.rejected ? this.rejected.company_id ?? null : null),
      route: a.route ?? null,
      provider: a.provider ?? null,
      template_id: a.template_id ?? null,
      total_recipients: a.total_recipients ?? 0,
      duplicates_removed: a.duplicates_removed ?? 0,
      runs: runNumbers.length,
      batch_count: batchCount,
      batches_done: last && last.completed ? batchCount : this.batchesDone.size,
      succeeded: count(this.learners, ['sent', 'issued']),
      failed: count(this.learners, ['failed']),
      suppressed: count(this.learners, ['suppressed']),
      delivered: count(this.reports, ['delivered']),
      bounced: count(this.reports, ['bounced']),
      complained: count(this.reports, ['complained']),
      problems: this.rejected ? this.rejected.problems : undefined,
    };
  }
}

class JobSummaries {
  constructor() {
    this.jobs = new Map();
  }

  job(jobId) {
    if (!this.jobs.has(jobId)) this.jobs.set(jobId, new JobState(jobId));
    return this.jobs.get(jobId);
  }

  // type: the ce_type without its "org.manireports.offload." prefix; data: the validated event JSON.
  apply(type, data) {
    if (data.job_id === undefined) return;
    const job = this.job(data.job_id);
    if (type === 'job.accepted.v1') {
      job.accepted = data;
      job.run(0).batchCount = data.batch_count;
    } else if (type === 'job.waiting-for-budget.v1') {
      job.waiting = data;
    } else if (type === 'job.rejected.v1') {
      job.rejected = data;
    } else if (type === 'batches.dispatched.v1') {
      job.run(data.run).batchCount = data.locations.length;
    } else if (type === 'batch.completed.v1') {
      const run = job.run(data.run);
      if (run.batchCount === null) run.batchCount = data.batch_count;
      job.batchesDone.add(`${data.run}:${data.batch_no}`);
    } else if (type === 'job.completed.v1') {
      const run = job.run(data.run);
      run.completed = true;
      run.cancelled = data.cancelled;
    } else if (OUTCOME_STATUS[type]) {
      const before = job.learners.get(data.userid);
      if (!before || before.run < data.run) job.learners.set(data.userid, { run: data.run, status: OUTCOME_STATUS[type] });
    } else if (REPORT_KIND[type]) {
      const kind = REPORT_KIND[type];
      const before = job.reports.get(data.userid);
      if (!before || SEVERITY[kind] > SEVERITY[before]) job.reports.set(data.userid, kind);
    }
  }

  all() {
    return [...this.jobs.values()].map((job) => job.summary()).sort((a, b) => a.job_id.localeCompare(b.job_id));
  }
}

module.exports = { JobSummaries, unreadVersion };
