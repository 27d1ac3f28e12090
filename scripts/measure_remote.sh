#!/usr/bin/env bash
# Measures the remote cache on pipelines/mnist_split.yaml (docs/team.md, "Cost"): a fully cached
# run with and without a remote, then push, pull and read-through times against moto (S3),
# nginx (WebDAV) and a directory, all on 127.0.0.1. Needs moto_server and nginx with dav_ext
# (see .ci/run). Computes the mnist_split cache first if WORK/a does not hold it.
#   usage: scripts/measure_remote.sh [WORK_DIR]    (default /tmp/cfpipe-remote-measure)
set -u
cd "$(dirname "$0")/.."
M=${1:-/tmp/cfpipe-remote-measure}
B=./target/release/cfpipe
P=pipelines/mnist_split.yaml
cargo build --release -q
mkdir -p "$M"
export AWS_ACCESS_KEY_ID=AKIDMEASURE AWS_SECRET_ACCESS_KEY=measure-secret AWS_REGION=us-east-1
MP=18231; NP=18232
$B run -q $P --cache "$M/a" --remote none | tail -1
moto_server -H 127.0.0.1 -p $MP >"$M/moto.log" 2>&1 & MOTO=$!
rm -rf "$M/ngx" "$M/dirremote"; mkdir -p "$M/ngx/www/dav"
cat > "$M/ngx/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_http_dav_ext_module.so;
daemon off; master_process off; worker_processes 1;
pid $M/ngx/nginx.pid; error_log $M/ngx/error.log;
events { worker_connections 64; }
http {
  access_log off; client_body_temp_path $M/ngx/body; client_max_body_size 0;
  server {
    listen 127.0.0.1:$NP; root $M/ngx/www;
    location /dav/ {
      dav_methods PUT DELETE MKCOL COPY MOVE; dav_ext_methods PROPFIND OPTIONS;
      create_full_put_path on; dav_access user:rw group:rw all:r;
    }
  }
}
CONF
nginx -p "$M/ngx" -c "$M/ngx/nginx.conf" >"$M/ngx/out.log" 2>&1 & NGX=$!
trap 'kill $MOTO $NGX 2>/dev/null' EXIT
for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/$MP) 2>/dev/null && break; sleep 0.1; done
printf 'PUT /bench HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' \
  | (exec 3<>/dev/tcp/127.0.0.1/$MP; cat >&3; head -1 <&3)
export AWS_ENDPOINT_URL=http://127.0.0.1:$MP
ms() { date +%s%3N; }
timeit() {
  local t0; t0=$(ms); "$@" >"$M/last.out" 2>"$M/last.err"; local rc=$?
  echo "$(( $(ms) - t0 )) ms rc=$rc :: $(tail -1 "$M/last.out")"
}
echo "== fully cached run, alternating without / with a remote"
for _ in $(seq 1 15); do
  echo -n "none   "; timeit $B run -q $P --cache "$M/a" --remote none
  echo -n "s3     "; timeit $B run -q $P --cache "$M/a" --remote s3://bench/team
done
for R in s3://bench/team http://127.0.0.1:$NP/dav/team "$M/dirremote"; do
  echo "== $R"
  rm -rf "$M/b"
  echo -n "push (pipeline)      "; timeit $B cache push $P --cache "$M/a" --remote "$R"
  echo -n "push again           "; timeit $B cache push $P --cache "$M/a" --remote "$R"
  echo -n "pull (pipeline)      "; timeit $B cache pull $P --cache "$M/b" --remote "$R"
  rm -rf "$M/b"
  echo -n "pull (all, listing)  "; timeit $B cache pull --cache "$M/b" --remote "$R"
  rm -rf "$M/b"
  echo -n "read-through run     "; timeit $B run -q $P --cache "$M/b" --remote "$R"
done
