// Classifies a photo with Visage's ClassifyService (the Go client generated from the protos)
// and prints each face's name, left to right: "<name or unknown>\t<confidence>".
//
//	VISAGE_TOKEN=... go run ./classify [-addr 127.0.0.1:50052] [-candidates 1] PHOTO
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	visagev1 "visage.local/api/gen/visage/v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50052", "classifier (or the Envoy gateway) host:port")
	candidates := flag.Int("candidates", 1, "candidate personas per face (1-10)")
	flag.Parse()
	if flag.NArg() != 1 {
		log.Fatal("usage: classify [-addr HOST:PORT] PHOTO")
	}
	content, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		log.Fatal(err)
	}
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if token := os.Getenv("VISAGE_TOKEN"); token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	reply, err := visagev1.NewClassifyServiceClient(conn).Classify(ctx, &visagev1.ClassifyRequest{
		Content: content, MaxCandidates: int32(*candidates)})
	if err != nil {
		log.Fatal(err)
	}
	faces := reply.GetFaces()
	sort.SliceStable(faces, func(i, j int) bool { return faces[i].GetBox().GetLeft() < faces[j].GetBox().GetLeft() })
	for _, face := range faces {
		name := face.GetDisplayName()
		if name == "" {
			name = "unknown"
		}
		fmt.Printf("%s\t%.3f\n", name, face.GetConfidence())
	}
}
