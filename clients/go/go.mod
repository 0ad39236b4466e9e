module visage.local/examples

go 1.24.0

require (
	google.golang.org/grpc v1.77.0
	visage.local/api v0.0.0
)

require (
	golang.org/x/net v0.46.1-0.20251013234738-63d1a5100f82 // indirect
	golang.org/x/sys v0.37.0 // indirect
	golang.org/x/text v0.30.0 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20251111163417-95abcf5c77ba // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20251103181224-f26f9409b101 // indirect
	google.golang.org/protobuf v1.36.10 // indirect
)

// The client generated from the protos by `make clients` (build/, never committed).
replace visage.local/api => ../../build/clients/go
