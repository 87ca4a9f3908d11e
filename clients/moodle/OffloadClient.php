<?php
// Reference client for Moodle: signs and submits jobs to the ManiReports Offload API, reads their progress,
// and verifies the signature of a callback. Plain PHP (7.4+), no framework and no extension beyond json,
// hash and openssl (for https): Moodle's own curl wrapper can replace http() in a plugin.
//
// The canonical string signed with HMAC-SHA256 under the key's secret (fields joined by "\n"):
//   METHOD \n PATH?QUERY \n TIMESTAMP \n NONCE \n hex(sha256(BODY))
// sent as X-Offload-Key-Id, X-Offload-Timestamp, X-Offload-Nonce and X-Offload-Signature (lower-case hex).

declare(strict_types=1);

final class OffloadResponse
{
    public int $status;
    /** @var array<mixed>|null */
    public ?array $body;

    public function __construct(int $status, ?array $body)
    {
        $this->status = $status;
        $this->body = $body;
    }

    public function errorCode(): ?string
    {
        return $this->body['error']['code'] ?? null;
    }
}

final class OffloadClient
{
    /** Above this many learners submitJob() sends the job in parts (set it at most max_recipients_per_job). */
    public const CHUNK_SIZE = 50000;

    private string $baseUrl;
    private string $keyId;
    private string $secret;
    private int $timeout;

    public function __construct(string $baseUrl, string $keyId, string $secret, int $timeout = 30)
    {
        $this->baseUrl = rtrim($baseUrl, '/');
        $this->keyId = $keyId;
        $this->secret = $secret;
        $this->timeout = $timeout;
    }

    public static function canonical(string $method, string $path, string $timestamp, string $nonce,
                                     string $body): string
    {
        return implode("\n", [strtoupper($method), $path, $timestamp, $nonce, hash('sha256', $body)]);
    }

    public static function sign(string $secret, string $method, string $path, string $timestamp, string $nonce,
                                string $body): string
    {
        return hash_hmac('sha256', self::canonical($method, $path, $timestamp, $nonce, $body), $secret);
    }

    /** The headers of one signed request. @return array<string,string> */
    public function signedHeaders(string $method, string $path, string $body): array
    {
        $timestamp = (string) time();
        $nonce = rtrim(strtr(base64_encode(random_bytes(18)), '+/', '-_'), '=');
        return [
            'X-Offload-Key-Id' => $this->keyId,
            'X-Offload-Timestamp' => $timestamp,
            'X-Offload-Nonce' => $nonce,
            'X-Offload-Signature' => self::sign($this->secret, $method, $path, $timestamp, $nonce, $body),
            'Content-Type' => 'application/json',
        ];
    }

    /**
     * Hand a job over. 202: accepted (durably in Kafka); 200: this job id was already handed over.
     * The job's callback_secret, if any, is dropped by the service; do not send one. A token in callback_url's
     * query (e.g. wstoken) is called as given, but the service keeps the query sealed, never in clear, and
     * shows it redacted (?wstoken=[redacted]) when it reports the job.
     * @param array<string,mixed> $job the original design's Job JSON
     */
    public function submitJob(array $job, ?array $content = null, int $chunkSize = self::CHUNK_SIZE): OffloadResponse
    {
        if (count($job['recipients'] ?? []) > $chunkSize) {
            if ($content !== null) {
                $job['content'] = array_intersect_key($content, ['subject' => 1, 'html' => 1, 'text' => 1]);
            }
            return $this->submitJobInChunks($job, $chunkSize);
        }
        if ($content !== null) {
            // A message Moodle composed itself: ['subject' => ..., 'html' => ..., 'text' => ...]. Rendered per
            // learner in the service's sandbox ({{ firstname }} works; HTML is escaped), checked like a
            // template (422 with every problem), at most 256 KiB for the three parts together.
            $job['content'] = array_intersect_key($content, ['subject' => 1, 'html' => 1, 'text' => 1]);
        }
        $body = json_encode($job, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
        return $this->request('POST', '/api/v1/jobs', $body);
    }

    /**
     * Hand a job of any size over in parts: its header ("chunked": true), its learners sorted by userid in
     * numbered chunks of $chunkSize, then the commit with the count and digest. Each part is retried on a
     * transport error or 503 (the same part again changes nothing). Returns the commit's answer (202: the
     * service serves the job; 422: refused, with the problems), or the first answer that was not a success.
     * @param array<string,mixed> $job the original design's Job JSON
     */
    public function submitJobInChunks(array $job, int $chunkSize = self::CHUNK_SIZE): OffloadResponse
    {
        $recipients = array_values($job['recipients']);
        unset($job['recipients'], $job['callback_secret']);
        // Sorted by userid (the service requires it, to count repeated learners exactly); stable, so the first
        // listing of a learner stays first.
        $order = array_keys($recipients);
        usort($order, static function (int $a, int $b) use ($recipients): int {
            return [(int) $recipients[$a]['userid'], $a] <=> [(int) $recipients[$b]['userid'], $b];
        });
        $job['chunked'] = true;
        $opened = $this->retried('POST', '/api/v1/jobs', self::json($job));
        if ($opened->status !== 202 && !($opened->status === 200 && ($opened->body['status'] ?? '') === 'open')) {
            return $opened;  // refused, or a job id already committed
        }
        $path = '/api/v1/jobs/' . rawurlencode((string) $job['job_id']);
        $digests = [];
        foreach (array_chunk($order, max(1, $chunkSize)) as $number => $indexes) {
            $part = [];
            $userids = '';
            foreach ($indexes as $index) {
                $part[] = $recipients[$index];
                $userids .= (int) $recipients[$index]['userid'] . "\n";
            }
            $digests[] = hash('sha256', $userids);
            $chunk = self::json(['chunk_no' => $number, 'recipients' => $part]);
            $reply = $this->retried('POST', $path . '/recipients', $chunk);
            if ($reply->status !== 202 && $reply->status !== 200) {
                return $reply;
            }
        }
        return $this->retried('POST', $path . '/commit', self::json([
            'chunk_count' => count($digests),
            'total_recipients' => count($recipients),
            'digest' => hash('sha256', implode('', $digests)),
        ]));
    }

    /** A request sent again (newly signed) after a transport error or a 503, up to $attempts times. */
    private function retried(string $method, string $path, string $body, int $attempts = 4): OffloadResponse
    {
        for ($attempt = 1; ; $attempt++) {
            try {
                $reply = $this->request($method, $path, $body);
                if ($reply->status !== 503 || $attempt >= $attempts) {
                    return $reply;
                }
            } catch (RuntimeException $exc) {
                if ($attempt >= $attempts) {
                    throw $exc;
                }
            }
            usleep(500000 * $attempt);
        }
    }

    /** @param array<mixed> $value */
    private static function json(array $value): string
    {
        return json_encode($value, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
    }

    /** The company's own email templates and the built-in template ids. */
    public function templates(int $companyId): OffloadResponse
    {
        return $this->request('GET', '/api/v1/companies/' . $companyId . '/templates');
    }

    /**
     * Publish a new version of the company's template $templateId (202 with its version; 422 with every
     * problem, nothing published). Jobs of the company naming this id use it from then on.
     * @param array<string,mixed> $draft subject, html, text, and optionally variables, sample_data, description
     */
    public function publishTemplate(int $companyId, string $templateId, array $draft): OffloadResponse
    {
        return $this->request('PUT', '/api/v1/companies/' . $companyId . '/templates/' . rawurlencode($templateId),
            json_encode($draft, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR));
    }

    /** Check and render a draft without publishing it (200: valid, problems, rendered subject/html/text). */
    public function previewTemplate(int $companyId, string $templateId, array $draft): OffloadResponse
    {
        return $this->request('POST', '/api/v1/companies/' . $companyId . '/templates/' . rawurlencode($templateId)
            . '/preview', json_encode($draft, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR));
    }

    public function job(string $jobId): OffloadResponse
    {
        return $this->request('GET', '/api/v1/jobs/' . rawurlencode($jobId));
    }

    public function failedRecipients(string $jobId, int $limit = 200, int $offset = 0): OffloadResponse
    {
        return $this->request('GET', '/api/v1/jobs/' . rawurlencode($jobId) . '/recipients?status=failed&limit='
            . $limit . '&offset=' . $offset);
    }

    public function retryFailed(string $jobId, bool $onlyRetryable = true): OffloadResponse
    {
        return $this->request('POST', '/api/v1/jobs/' . rawurlencode($jobId) . '/retry',
            json_encode(['only_retryable' => $onlyRetryable], JSON_THROW_ON_ERROR));
    }

    public function cancel(string $jobId, ?string $reason = null): OffloadResponse
    {
        return $this->request('POST', '/api/v1/jobs/' . rawurlencode($jobId) . '/cancel',
            json_encode(['reason' => $reason], JSON_THROW_ON_ERROR));
    }

    public function companySettings(int $companyId): OffloadResponse
    {
        return $this->request('GET', '/api/v1/companies/' . $companyId . '/settings');
    }

    /** @param array<string,mixed> $settings */
    public function changeCompanySettings(int $companyId, array $settings): OffloadResponse
    {
        return $this->request('PUT', '/api/v1/companies/' . $companyId . '/settings',
            json_encode($settings, JSON_THROW_ON_ERROR));
    }

    /** The company's suppression list (newest first) and its latest changes. */
    public function suppressions(int $companyId): OffloadResponse
    {
        return $this->request('GET', '/api/v1/companies/' . $companyId . '/suppressions');
    }

    /** Put a learner on the list: $scope '*' every message, 'bulk' every bulk message, or one list id. */
    public function addSuppression(int $companyId, int $userId, string $reason, string $scope = '*'): OffloadResponse
    {
        return $this->request('POST', '/api/v1/companies/' . $companyId . '/suppressions',
            json_encode(['userid' => $userId, 'scope' => $scope, 'reason' => $reason], JSON_THROW_ON_ERROR));
    }

    public function removeSuppression(int $companyId, int $userId, string $reason, string $scope = '*'): OffloadResponse
    {
        return $this->request('DELETE', '/api/v1/companies/' . $companyId . '/suppressions/' . $userId,
            json_encode(['scope' => $scope, 'reason' => $reason], JSON_THROW_ON_ERROR));
    }

    /**
     * A verified callback body that says a learner unsubscribed (event "unsubscribed"): ['userid' => ...,
     * 'list_id' => ..., 'company_id' => ...], or null for any other callback. Moodle then turns that list's
     * message preference off for the user, e.g. set_user_preference('message_provider_<component>_<name>_enabled',
     * 'none', $userid).
     * @return array<string,mixed>|null
     */
    public static function unsubscribeFrom(string $body): ?array
    {
        $data = json_decode($body, true, 16, JSON_THROW_ON_ERROR);
        if (!is_array($data) || ($data['event'] ?? '') !== 'unsubscribed') {
            return null;
        }
        return ['userid' => (int) $data['userid'], 'list_id' => (string) $data['list_id'],
                'company_id' => (int) $data['company_id']];
    }

    /**
     * A verified job callback that says the job paused on its bounce or complaint rate (event "paused": its
     * batches wait until an admin resumes or cancels it) or was resumed (event "resumed"): ['event' => ...,
     * 'job_id' => ..., 'reason' => ..., 'figures' => [...]], or null for any other callback. "paused" carries
     * the reason, the counts (sent, bounced, complained), the rates and the thresholds; "resumed" who asked and why.
     * Moodle may tell the course's teachers, or show it beside the job.
     * @return array<string,mixed>|null
     */
    public static function pauseFrom(string $body): ?array
    {
        $data = json_decode($body, true, 16, JSON_THROW_ON_ERROR);
        $event = is_array($data) ? ($data['event'] ?? '') : '';
        if ($event !== 'paused' && $event !== 'resumed') {
            return null;
        }
        $figures = $event === 'paused' ? $data['pause'] : $data['resume'];
        return ['event' => $event, 'job_id' => (string) $data['job_id'], 'reason' => $figures['reason'],
                'figures' => $figures];
    }

    /**
     * Verify a callback from the service: same canonical string, over the callback URL's path (and query),
     * under the key the service names in X-Offload-Key-Id; the timestamp must be within $window seconds.
     * Remember accepted signatures for $window seconds to refuse a replay (not done here: needs storage).
     * @param array<string,string> $headers header name => value (any case)
     * @param array<string,string> $secrets key id => secret, e.g. both keys of a rotation
     */
    public static function verifyCallback(array $headers, string $method, string $path, string $body,
                                          array $secrets, int $window = 300, ?int $now = null): bool
    {
        $h = array_change_key_case($headers, CASE_LOWER);
        $keyId = $h['x-offload-key-id'] ?? '';
        $timestamp = $h['x-offload-timestamp'] ?? '';
        $nonce = $h['x-offload-nonce'] ?? '';
        $signature = strtolower($h['x-offload-signature'] ?? '');
        if (!isset($secrets[$keyId]) || !ctype_digit($timestamp) || $nonce === '') {
            return false;
        }
        if (abs(($now ?? time()) - (int) $timestamp) > $window) {
            return false;
        }
        $expected = self::sign($secrets[$keyId], $method, $path, $timestamp, $nonce, $body);
        return hash_equals($expected, $signature);  // constant time
    }

    private function request(string $method, string $path, string $body = ''): OffloadResponse
    {
        $headers = $this->signedHeaders($method, $path, $body);
        $lines = [];
        foreach ($headers as $name => $value) {
            $lines[] = $name . ': ' . $value;
        }
        $context = stream_context_create(['http' => [
            'method' => $method,
            'header' => implode("\r\n", $lines),
            'content' => $body,
            'timeout' => $this->timeout,
            'ignore_errors' => true,  // read the JSON error of a 4xx too
        ]]);
        $raw = @file_get_contents($this->baseUrl . $path, false, $context);
        if ($raw === false) {
            throw new RuntimeException('offload API unreachable at ' . $this->baseUrl);
        }
        $status = 0;
        foreach ($http_response_header ?? [] as $line) {
            if (preg_match('#^HTTP/\S+\s+(\d{3})#', $line, $m)) {
                $status = (int) $m[1];  // the last status line wins (after redirects)
            }
        }
        $decoded = $raw === '' ? null : json_decode($raw, true);
        return new OffloadResponse($status, is_array($decoded) ? $decoded : null);
    }
}
