// Ingestion at a constant arrival rate, with thresholds.
//   k6 run loadtest/ingestion.js                                  # 500/s for 60 s against :7080
//   k6 run -e RATE=2000 -e DURATION=2m -e BASE_URL=http://host:7080 loadtest/ingestion.js
//   k6 run -e SMOKE=1 loadtest/ingestion.js                       # 5 s at 20/s (the test suite)
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:7080';
const SMOKE = __ENV.SMOKE === '1';
const RATE = SMOKE ? 20 : Number(__ENV.RATE || 500);

export const options = {
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
  scenarios: {
    ingestion: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: SMOKE ? '5s' : __ENV.DURATION || '60s',
      preAllocatedVUs: SMOKE ? 5 : Math.max(10, Math.ceil(RATE / 20)),
      maxVUs: SMOKE ? 20 : Math.max(50, RATE),
    },
  },
  // The smoke run (the test suite, a debug build on a shared machine) checks
  // that every command is accepted; latency and pacing are judged on real runs.
  thresholds: SMOKE
    ? {
        http_req_failed: ['rate<0.001'],
        checks: ['rate>0.999'],
      }
    : {
        http_req_failed: ['rate<0.001'],
        'http_req_duration{name:ingest}': ['p(95)<250', 'p(99)<500'],
        checks: ['rate>0.999'],
        dropped_iterations: ['rate<0.01'],
      },
};

// The first record after a producer starts waits ~1 s for librdkafka's
// idempotent producer id; one warm-up command keeps it out of the figures.
export function setup() {
  const res = http.post(`${BASE_URL}/api/v1/timestamp`, null, { tags: { name: 'warmup' } });
  if (res.status !== 202) throw new Error(`warm-up command got ${res.status}: ${res.body}`);
}

export default function () {
  const ts = new Date().toISOString();
  const res = http.post(`${BASE_URL}/api/v1/timestamp/${ts}`, null, {
    headers: { correlationId: `k6-${__VU}-${__ITER}` },
    tags: { name: 'ingest' },
  });
  check(res, {
    'status is 202': (r) => r.status === 202,
    'body has the id': (r) => typeof r.json('id') === 'string',
  });
}
