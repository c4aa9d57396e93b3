"""The AWS platform: the Platform protocols over Lambda, API Gateway, SQS, DynamoDB, S3, CloudWatch and
CloudFormation with boto3. Only `backout.platforms.open_platform` imports it."""
