-- The worked questions of docs/analytics.md, run by DuckDB in the folder that
-- `offload export --format parquet --partition-by company,date` wrote.
-- docs/make_analytics_sample.py runs every block in order and prints its result.

-- name: setup
SET TimeZone = 'UTC';
-- Each learner's final outcome: the one of their latest run (a retry run replaces a failure); a record
-- repeated after a worker crash is the same outcome and counts once.
CREATE OR REPLACE VIEW final_outcomes AS
SELECT * FROM (
    SELECT company_id, job_id, userid, run, 'sent' AS status, sent_at AS happened_at
    FROM read_parquet('recipient.sent.v1/**/*.parquet', hive_partitioning = true)
    UNION ALL
    SELECT company_id, job_id, userid, run, 'failed' AS status, failed_at AS happened_at
    FROM read_parquet('recipient.failed.v1/**/*.parquet', hive_partitioning = true)
)
QUALIFY row_number() OVER (PARTITION BY job_id, userid ORDER BY run DESC, happened_at) = 1;
-- What the provider reported later about each learner's message; the most severe report stands.
CREATE OR REPLACE VIEW reports AS
SELECT job_id, userid, arg_max(kind, severity) AS kind
FROM (
    SELECT job_id, userid, 'delivered' AS kind, 1 AS severity
    FROM read_parquet('recipient.delivered.v1/**/*.parquet', hive_partitioning = true)
    UNION ALL
    SELECT job_id, userid, 'bounced', 2 FROM read_parquet('recipient.bounced.v1/**/*.parquet', hive_partitioning = true)
    UNION ALL
    SELECT job_id, userid, 'complained', 3
    FROM read_parquet('recipient.complained.v1/**/*.parquet', hive_partitioning = true)
)
GROUP BY job_id, userid;
CREATE OR REPLACE VIEW accepted AS
SELECT * FROM read_parquet('job.accepted.v1/**/*.parquet', hive_partitioning = true);
CREATE OR REPLACE VIEW completed AS
SELECT * FROM read_parquet('job.completed.v1/**/*.parquet', hive_partitioning = true);

-- name: column types of recipient.sent.v1
SELECT column_name, column_type
FROM (DESCRIBE SELECT * FROM read_parquet('recipient.sent.v1/**/*.parquet', hive_partitioning = true));

-- name: 1. delivery rate per company per month
SELECT o.company_id,
       strftime(date_trunc('month', o.happened_at), '%Y-%m') AS month,
       count(*) AS learners,
       count(*) FILTER (WHERE o.status = 'sent') AS sent,
       count(*) FILTER (WHERE o.status = 'failed') AS failed,
       count(*) FILTER (WHERE r.kind = 'bounced') AS bounced,
       count(*) FILTER (WHERE r.kind = 'complained') AS complained,
       round(100.0 * count(*) FILTER (WHERE o.status = 'sent' AND r.kind IS DISTINCT FROM 'bounced')
             / count(*), 2) AS delivery_rate_pct
FROM final_outcomes o
LEFT JOIN reports r USING (job_id, userid)
GROUP BY ALL
ORDER BY o.company_id, month;

-- name: 2. time to complete per job size
SELECT CASE WHEN a.total_recipients < 500 THEN '1: < 500'
            WHEN a.total_recipients < 2000 THEN '2: 500 - 1,999'
            ELSE '3: >= 2,000' END AS job_size,
       count(*) AS jobs,
       sum(a.total_recipients) AS learners,
       round(median(epoch(c.completed_at - a.accepted_at)), 2) AS median_seconds,
       round(max(epoch(c.completed_at - a.accepted_at)), 2) AS max_seconds,
       round(sum(a.total_recipients) / sum(epoch(c.completed_at - a.accepted_at))) AS learners_per_second
FROM accepted a
JOIN completed c ON c.job_id = a.job_id AND c.run = 0
GROUP BY ALL
ORDER BY job_size;

-- name: 3. bounce rate per template
SELECT a.template_id,
       count(DISTINCT a.job_id) AS jobs,
       count(*) FILTER (WHERE o.status = 'sent') AS sent,
       count(*) FILTER (WHERE r.kind = 'bounced') AS bounced,
       round(100.0 * count(*) FILTER (WHERE r.kind = 'bounced')
             / count(*) FILTER (WHERE o.status = 'sent'), 2) AS bounce_rate_pct
FROM final_outcomes o
JOIN accepted a USING (job_id)
LEFT JOIN reports r USING (job_id, userid)
GROUP BY ALL
ORDER BY bounce_rate_pct DESC, a.template_id;
