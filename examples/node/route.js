// A switch in Node.js talking to pairline with @grpc/grpc-js and @grpc/proto-loader:
// read health, log an agent in, route a contact (with a deadline and the switch's
// own fallback), confirm the reservation. Prints one JSON object on stdout.
//
//   cd examples/node && npm ci
//   PAIRLINE_TARGET=127.0.0.1:50051 PAIRLINE_API_KEY=demo-key-change-me node route.js
//
// Environment: PAIRLINE_TARGET (host:port), PAIRLINE_API_KEY, PAIRLINE_PROTOS (the
// repository's protos/ directory), PAIRLINE_DEADLINE_MS (decision deadline, 250).
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const target = process.env.PAIRLINE_TARGET || '127.0.0.1:50051';
const apiKey = process.env.PAIRLINE_API_KEY || 'demo-key-change-me';
const protos = process.env.PAIRLINE_PROTOS || path.join(__dirname, '..', '..', 'protos');
const decisionDeadlineMs = Number(process.env.PAIRLINE_DEADLINE_MS || 250);

const definition = protoLoader.loadSync(
  ['pairline/v1/router.proto', 'grpc/health/v1/health.proto'],
  {
    // protos/ has the contract; ./protos has google/rpc/status.proto and health.
    includeDirs: [protos, path.join(__dirname, 'protos')],
    keepCase: true, // field names as in the .proto (contact_id, not contactId)
    longs: String, // int64 (unix ms) as strings: no precision lost
    enums: String, // 'MODE_PAIRED', not 1
    defaults: true,
    oneofs: true,
  },
);
const loaded = grpc.loadPackageDefinition(definition);
const pairline = loaded.pairline.v1;
const health = loaded.grpc.health.v1;

// The same retry policy as the Python client: only the idempotent calls are
// retried, on UNAVAILABLE, inside the call's deadline.
const serviceConfig = {
  methodConfig: [
    {
      name: [
        { service: 'pairline.v1.Router', method: 'RouteContact' },
        { service: 'pairline.v1.Router', method: 'GetAgentState' },
      ],
      retryPolicy: {
        maxAttempts: 4,
        initialBackoff: '0.01s',
        maxBackoff: '0.2s',
        backoffMultiplier: 2,
        retryableStatusCodes: ['UNAVAILABLE'],
      },
    },
  ],
};
const options = { 'grpc.service_config': JSON.stringify(serviceConfig) };
// For TLS: grpc.credentials.createSsl(fs.readFileSync('ca.pem')) instead.
const credentials = grpc.credentials.createInsecure();

const router = new pairline.Router(target, credentials, options);
const healthClient = new health.Health(target, credentials);

function metadata() {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${apiKey}`);
  return md;
}

function deadline(ms) {
  return new Date(Date.now() + ms);
}

// Promise wrapper for a unary call: call(client, 'Method', request, {deadlineMs, auth}).
function call(client, method, request, { deadlineMs = 2000, auth = true } = {}) {
  return new Promise((resolve, reject) => {
    const args = [request];
    if (auth) args.push(metadata());
    args.push({ deadline: deadline(deadlineMs) });
    args.push((err, response) => (err ? reject(err) : resolve(response)));
    client[method](...args);
  });
}

// The switch's own routing when pairline does not answer in time: here a fixed
// agent stands in for the switch's longest-idle agent.
function switchBaseline(request, err) {
  return {
    decision: { contact_id: request.contact_id, agent_id: 'switch-choice', mode: 'MODE_BASELINE' },
    fallback: true,
    code: grpc.status[err.code],
  };
}

async function routeContact(request) {
  try {
    const decision = await call(router, 'RouteContact', request, {
      deadlineMs: decisionDeadlineMs,
    });
    return { decision, fallback: false };
  } catch (err) {
    if (err.code === grpc.status.DEADLINE_EXCEEDED || err.code === grpc.status.UNAVAILABLE) {
      return switchBaseline(request, err);
    }
    throw err;
  }
}

async function main() {
  const served = await call(healthClient, 'Check', { service: 'pairline.v1.Router' }, {
    auth: false,
  });
  const agent = await call(router, 'SetAgentState', {
    agent_id: 'node-agent-1',
    status: 'AGENT_STATUS_AVAILABLE',
    queues: [{ queue: 'sales', proficiency: 80 }],
    capacities: [{ channel: 'CHANNEL_VOICE', capacity: 1 }],
  });
  const routed = await routeContact({
    contact_id: `node-contact-${process.pid}`,
    queue: 'sales',
    channel: 'CHANNEL_VOICE',
    customer_key: '+15550100',
  });
  let confirmed = null;
  if (!routed.fallback && routed.decision.decision_id) {
    confirmed = await call(router, 'ConfirmDecision', {
      decision_id: routed.decision.decision_id,
    });
  }
  process.stdout.write(
    `${JSON.stringify({ health: served.status, agent, routed, confirmed }, null, 2)}\n`,
  );
}

main()
  .catch((err) => {
    process.stderr.write(`${grpc.status[err.code] || 'ERROR'}: ${err.details || err.message}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    router.close();
    healthClient.close();
  });
