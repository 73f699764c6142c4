module spillway.dev/bench_http_endpoint

go 1.21
