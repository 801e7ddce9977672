// End to end: POST a command, then GET it from the query API until it is
// visible; reports the latency until visible as the trend `visible_latency`.
//   k6 run loadtest/e2e.js                 # 100/s for 60 s (:7080 commands, :7081 queries)
//   k6 run -e SMOKE=1 loadtest/e2e.js      # 5 s at 10/s (the test suite)
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Trend, Rate } from 'k6/metrics';

const COMMAND_URL = __ENV.COMMAND_URL || 'http://127.0.0.1:7080';
const QUERY_URL = __ENV.QUERY_URL || 'http://127.0.0.1:7081';
const SMOKE = __ENV.SMOKE === '1';
const RATE = SMOKE ? 10 : Number(__ENV.RATE || 100);
const VISIBLE_WITHIN_MS = Number(__ENV.VISIBLE_WITHIN_MS || 10000);

const visibleLatency = new Trend('visible_latency', true);
const visible = new Rate('visible');

export const options = {
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
  scenarios: {
    end_to_end: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: SMOKE ? '5s' : __ENV.DURATION || '60s',
      preAllocatedVUs: SMOKE ? 10 : Math.max(20, RATE),
      maxVUs: SMOKE ? 50 : Math.max(100, RATE * 5),
    },
  },
  // The smoke run (the test suite, a debug build on a shared machine) checks
  // that every command becomes visible; latency is judged on real runs.
  thresholds: SMOKE
    ? {
        visible: ['rate>0.999'],
        'http_req_failed{name:post}': ['rate<0.001'],
      }
    : {
        visible: ['rate>0.999'],
        visible_latency: ['p(99)<2000'],
        'http_req_failed{name:post}': ['rate<0.001'],
        'http_req_duration{name:post}': ['p(99)<500'],
      },
};

// The first record after a producer starts waits ~1 s for librdkafka's
// idempotent producer id; one warm-up command keeps it out of the figures.
export function setup() {
  const res = http.post(`${COMMAND_URL}/api/v1/timestamp`, null, { tags: { name: 'warmup' } });
  if (res.status !== 202) throw new Error(`warm-up command got ${res.status}: ${res.body}`);
}

export default function () {
  const started = Date.now();
  const post = http.post(`${COMMAND_URL}/api/v1/timestamp`, null, { tags: { name: 'post' } });
  if (!check(post, { 'accepted': (r) => r.status === 202 })) {
    visible.add(false);
    return;
  }
  const id = post.json('id');
  while (Date.now() - started < VISIBLE_WITHIN_MS) {
    // 404 until the consumer has projected it: expected, not a failure.
    const get = http.get(`${QUERY_URL}/api/v1/timestamp/${id}`, {
      tags: { name: 'get' },
      responseCallback: http.expectedStatuses(200, 404),
    });
    if (get.status === 200) {
      visibleLatency.add(Date.now() - started);
      visible.add(true);
      return;
    }
    sleep(0.01);
  }
  visible.add(false);
}
