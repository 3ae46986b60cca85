// pm2 process file for many hosts (docs/scale-out.md): the door (the neuron, with JOB_BACKEND=redis and
// REDIS_URL in its .env) on the host the validator reaches, and a kontext-worker on each GPU host:
//   pm2 start ecosystem.scale.config.js --only kontext-door     # the door's host
//   pm2 start ecosystem.scale.config.js --only kontext-worker   # each GPU host (same REDIS_URL in its .env)
// Both stop gracefully on SIGTERM; kill_timeout is above the whole stop (see ecosystem.config.js).
module.exports = {
  apps: [
    {
      name: "kontext-door",
      script: "scripts/start_miner.sh",
      interpreter: "bash",
      cwd: __dirname,
      kill_timeout: 90000, // ms
      max_restarts: 20,
      restart_delay: 5000,
      env: { PYTHONUNBUFFERED: "1", JOB_BACKEND: "redis" },
    },
    {
      name: "kontext-worker",
      script: "scripts/start_worker.sh",
      interpreter: "bash",
      cwd: __dirname,
      kill_timeout: 90000, // ms
      max_restarts: 20,
      restart_delay: 5000,
      env: { PYTHONUNBUFFERED: "1" },
    },
  ],
};
