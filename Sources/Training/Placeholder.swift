// Training target: filled by later issues.
