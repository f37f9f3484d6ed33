// NN target: filled by later issues.
