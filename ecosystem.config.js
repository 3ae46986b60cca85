// pm2 process file: `pm2 start ecosystem.config.js` (edit the args first), or directly:
//   pm2 start scripts/start_miner.sh --name kontext-miner -- --netuid 11 \
//     --wallet.name miner --wallet.hotkey default --axon.port 8901 --axon.external_ip <PUBLIC_IP> \
//     --commit.address <DNS name of the certificate> --axon.certfile /etc/kontext/fullchain.pem --axon.keyfile /etc/kontext/privkey.pem
// pm2 sends SIGTERM on stop/restart: the miner stops accepting, finishes the running job and exits 0.
module.exports = {
  apps: [
    {
      name: "kontext-miner",
      script: "scripts/start_miner.sh",
      interpreter: "bash",
      args: [
        "--netuid", "11",
        "--subtensor.network", "finney",
        "--wallet.name", "miner",
        "--wallet.hotkey", "default",
        "--axon.port", "8901",
        "--axon.external_ip", "YOUR_PUBLIC_IP",
        "--commit.address", "YOUR_DNS_NAME", // the name the certificate is for: the validator checks it
        "--axon.certfile", "/etc/kontext/fullchain.pem",
        "--axon.keyfile", "/etc/kontext/privkey.pem",
      ].join(" "),
      cwd: __dirname,
      kill_timeout: 90000, // ms: longer than the longest edit, so SIGTERM can finish it
      max_restarts: 20,
      restart_delay: 5000,
      env: { PYTHONUNBUFFERED: "1" },
    },
  ],
};
