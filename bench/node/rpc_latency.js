// RPC over direct reply-to with amqplib, the reference for bench/rpc_latency_bench.py:
// a callee and a caller in this one process, each on its own connection; WARMUP calls,
// then CALLS sequential calls (each one's latency), then CALLS with IN_FLIGHT at once.
// Prints one JSON line. Usage: node rpc_latency.js URL QUEUE CALLS IN_FLIGHT WARMUP
'use strict';
const amqp = require('amqplib');
const [url, queue, calls, inFlight, warmup] = process.argv.slice(2);
const N = +calls, LANES = +inFlight, WARMUP = +warmup;

async function main() {
  const calleeConnection = await amqp.connect(url, {noDelay: true});
  const callee = await calleeConnection.createChannel();
  await callee.assertQueue(queue, {durable: false, autoDelete: true});
  await callee.prefetch(LANES * 2);
  await callee.consume(queue, (message) => {
    const {x, y} = JSON.parse(message.content);
    callee.sendToQueue(message.properties.replyTo, Buffer.from(JSON.stringify(x * y)), {
      correlationId: message.properties.correlationId,
    });
    callee.ack(message);
  });
  const callerConnection = await amqp.connect(url, {noDelay: true});
  const caller = await callerConnection.createChannel();
  const waiting = new Map();
  let lastId = 0;
  await caller.consume('amq.rabbitmq.reply-to', (message) => {
    const id = message.properties.correlationId;
    const resolve = waiting.get(id);
    waiting.delete(id);
    resolve(JSON.parse(message.content));
  }, {noAck: true});
  const call = (x, y) => new Promise((resolve) => {
    const id = String(++lastId);
    waiting.set(id, resolve);
    caller.sendToQueue(queue, Buffer.from(JSON.stringify({x, y})), {
      correlationId: id, replyTo: 'amq.rabbitmq.reply-to',
    });
  });
  for (let i = 0; i < WARMUP; i++) await call(i, 2);
  const latencies = [];
  for (let i = 0; i < N; i++) {
    const started = process.hrtime.bigint();
    const result = await call(i, 2);
    latencies.push(Number(process.hrtime.bigint() - started));
    if (result !== i * 2) throw new Error(`call ${i} returned ${result}`);
  }
  const started = process.hrtime.bigint();
  let next = 0;
  await new Promise((done) => {
    let finished = 0;
    const lane = () => {
      if (next >= N) return;
      const i = next++;
      call(i, 2).then(() => { if (++finished === N) done(); else lane(); });
    };
    for (let i = 0; i < LANES; i++) lane();
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(JSON.stringify({latencies_ns: latencies, in_flight_calls_per_s: N / seconds}));
  await callerConnection.close();
  await calleeConnection.close();
}

main().catch((error) => { console.error(error); process.exit(1); });
