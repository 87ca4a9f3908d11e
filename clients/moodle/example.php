<?php
// php example.php BASE_URL KEY_ID SECRET COMMAND [ARG]
//   submit JOB_FILE [CONTENT_FILE]   (in chunks above OFFLOAD_CHUNK_SIZE learners, default 50,000)
//   job JOB_ID | failed JOB_ID | settings COMPANY_ID
//   publish-template COMPANY_ID TEMPLATE_ID DRAFT_FILE | preview-template COMPANY_ID TEMPLATE_ID DRAFT_FILE
//   verify-callback FILE   (FILE: {"headers": {...}, "method": ..., "path": ..., "body": ..., "secrets": {...}})
//   unsubscribe-callback FILE   (the same FILE: prints {"valid": bool, "unsubscribe": {...} or null})
//   pause-callback FILE   (the same FILE: prints {"valid": bool, "pause": {...} or null})
// Prints one JSON line: {"status": HTTP status, "body": the API's JSON} (or {"valid": bool}).
declare(strict_types=1);
require __DIR__ . '/OffloadClient.php';

[$script, $base, $keyId, $secret, $command] = array_pad($argv, 5, '');
$arg = $argv[5] ?? '';
$client = new OffloadClient($base, $keyId, $secret);
switch ($command) {
    case 'submit':
        $content = isset($argv[6])
            ? json_decode((string) file_get_contents($argv[6]), true, 512, JSON_THROW_ON_ERROR) : null;
        $reply = $client->submitJob(json_decode((string) file_get_contents($arg), true, 512, JSON_THROW_ON_ERROR),
            $content, (int) (getenv('OFFLOAD_CHUNK_SIZE') ?: OffloadClient::CHUNK_SIZE));
        break;
    case 'publish-template':
    case 'preview-template':
        $draft = json_decode((string) file_get_contents($argv[7] ?? ''), true, 512, JSON_THROW_ON_ERROR);
        $reply = $command === 'publish-template'
            ? $client->publishTemplate((int) $arg, $argv[6] ?? '', $draft)
            : $client->previewTemplate((int) $arg, $argv[6] ?? '', $draft);
        break;
    case 'job':
        $reply = $client->job($arg);
        break;
    case 'failed':
        $reply = $client->failedRecipients($arg);
        break;
    case 'settings':
        $reply = $client->companySettings((int) $arg);
        break;
    case 'verify-callback':
        $c = json_decode((string) file_get_contents($arg), true, 512, JSON_THROW_ON_ERROR);
        $valid = OffloadClient::verifyCallback($c['headers'], $c['method'], $c['path'], $c['body'], $c['secrets']);
        echo json_encode(['valid' => $valid]), "\n";
        exit(0);
    case 'unsubscribe-callback':
        $c = json_decode((string) file_get_contents($arg), true, 512, JSON_THROW_ON_ERROR);
        $valid = OffloadClient::verifyCallback($c['headers'], $c['method'], $c['path'], $c['body'], $c['secrets']);
        echo json_encode(['valid' => $valid, 'unsubscribe' => $valid ? OffloadClient::unsubscribeFrom($c['body']) : null]),
            "\n";
        exit(0);
    case 'pause-callback':
        $c = json_decode((string) file_get_contents($arg), true, 512, JSON_THROW_ON_ERROR);
        $valid = OffloadClient::verifyCallback($c['headers'], $c['method'], $c['path'], $c['body'], $c['secrets']);
        echo json_encode(['valid' => $valid, 'pause' => $valid ? OffloadClient::pauseFrom($c['body']) : null]), "\n";
        exit(0);
    default:
        fwrite(STDERR, "unknown command {$command}\n");
        exit(2);
}
echo json_encode(['status' => $reply->status, 'body' => $reply->body], JSON_UNESCAPED_SLASHES), "\n";
