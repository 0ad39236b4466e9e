"""Face finding and embedding (dlib, offline): pipeline.FacePipeline does one
image; pool.PipelinePool runs it in bounded worker processes for services."""
