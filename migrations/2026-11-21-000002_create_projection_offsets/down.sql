DROP TABLE projection_offsets;
