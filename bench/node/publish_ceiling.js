// Publishing with amqplib, the reference for bench/bulk_bench.py: N messages
// {"task_id": i} (persistent, mandatory, as leveret's tasks) on one confirming channel,
// as many in flight as the socket takes, into QUEUE (declared, then deleted);
// prints the seconds from the first publish to the last confirm as one JSON line.
// Usage: node publish_ceiling.js URL QUEUE N durable|transient
'use strict';
const amqp = require('amqplib');
const [url, queue, count, kind] = process.argv.slice(2);
const N = +count;

async function main() {
  const connection = await amqp.connect(url, {noDelay: true});
  const channel = await connection.createConfirmChannel();
  await channel.assertQueue(queue, {durable: kind === 'durable', autoDelete: false});
  const started = process.hrtime.bigint();
  for (let i = 0; i < N; i++) {
    const body = Buffer.from(JSON.stringify({task_id: i}));
    const options = {persistent: true, mandatory: true, contentType: 'application/json'};
    if (!channel.sendToQueue(queue, body, options)) {
      await new Promise((resume) => channel.once('drain', resume));
    }
  }
  await channel.waitForConfirms();
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const {messageCount} = await channel.checkQueue(queue);
  await channel.deleteQueue(queue);
  console.log(JSON.stringify({seconds, queued: messageCount}));
  await connection.close();
}

main().catch((error) => { console.error(error); process.exit(1); });
