// pm2 process file of the miner neuron: `pm2 start ecosystem.config.js`. Nothing to edit here: every setting
// (wallet, netuid, ports, certificate, commitment address) comes from .env (cp .env.example .env).
// pm2 sends SIGTERM on stop/restart: the miner stops accepting (503), lets the running job finish within
// SHUTDOWN_GRACE_SECONDS (60), sends the callbacks under way and exits 0. kill_timeout is above that whole stop
// (60 s grace + 10 s engine thread + 5 s open requests + 10 s callbacks = 85 s); pm2's own default, 1.6 s,
// would SIGKILL the running job.
module.exports = {
  apps: [
    {
      name: "kontext-miner",
      script: "scripts/start_miner.sh",
      interpreter: "bash",
      cwd: __dirname,
      kill_timeout: 90000, // ms
      max_restarts: 20,
      restart_delay: 5000,
      env: { PYTHONUNBUFFERED: "1" },
    },
  ],
};
