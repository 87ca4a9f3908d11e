<?php
// php example.php BASE_URL KEY_ID SECRET COMMAND [ARG]
//   submit JOB_FILE | job JOB_ID | failed JOB_ID | settings COMPANY_ID
//   verify-callback FILE   (FILE: {"headers": {...}, "method": ..., "path": ..., "body": ..., "secrets": {...}})
//   unsubscribe-callback FILE   (the same FILE: prints {"valid": bool, "unsubscribe": {...} or null})
// Prints one JSON line: {"status": HTTP status, "body": the API's JSON} (or {"valid": bool}).
declare(strict_types=1);
require __DIR__ . '/OffloadClient.php';

[$script, $base, $keyId, $secret, $command] = array_pad($argv, 5, '');
$arg = $argv[5] ?? '';
$client = new OffloadClient($base, $keyId, $secret);
switch ($command) {
    case 'submit':
        $reply = $client->submitJob(json_decode((string) file_get_contents($arg), true, 512, JSON_THROW_ON_ERROR));
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
    default:
        fwrite(STDERR, "unknown command {$command}\n");
        exit(2);
}
echo json_encode(['status' => $reply->status, 'body' => $reply->body], JSON_UNESCAPED_SLASHES), "\n";
